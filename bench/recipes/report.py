"""bench/results/recipes.md from recipes.json: one table per dataset and split (see run.py)."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("select", "test")
DATASETS = {"sst2": "SST-2", "agnews": "AG News"}


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}" if x <= 1 else f"{x:.2f}"


def row(name: str, run: dict, split: str) -> str:
    """One markdown table row: the recipe, its scores on split, its training cost."""
    e, t = run["eval"][split], run.get("train") or {}
    cells = [name, pct(e.get("accuracy")), pct(e.get("macro_f1")), pct(e.get("calibrated_accuracy")),
             pct(e.get("calibrated_macro_f1")), str(e.get("examples", "")), str(t.get("updates", "")),
             str(t.get("final_loss", "")), str(t.get("last5_loss", "")), str(t.get("wall_s", "")),
             str(t.get("cpu_s", "")), str(t.get("load_before", "")), str(e.get("wall_s", ""))]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| recipe | accuracy % | macro-F1 % | accuracy % (calibrated) | macro-F1 % (calibrated) | examples "
          "| updates | final loss | mean of last 5 logged losses | train wall s | train CPU s | load avg at start "
          "| eval wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def write_report(results: dict, path: Path) -> None:
    """Write the markdown report: the sessions (commands, notes) then a table per dataset and split."""
    lines = ["# Recipes: prompt tuning vs LoRA on smollm2-135m-instruct, 512 training rows, one epoch", "",
             "Written by `bench/recipes/run.py` from `bench/results/recipes.json`; protocol in "
             "`bench/recipes/README.md`. Sessions (each command, OMP_NUM_THREADS, the note on what else ran):", ""]
    for s in results.get("sessions", []):
        lines.append(f"- {s['started']}: `OMP_NUM_THREADS={s.get('omp_num_threads')} {s['command']}`"
                     f" (1-min load at start {s.get('load_at_start')}){': ' + s['note'] if s.get('note') else ''}")
    for ds, title in DATASETS.items():
        for split in SPLITS:
            runs = sorted(((n, r) for n, r in results.get("runs", {}).items()
                           if r["dataset"] == ds and split in r.get("eval", {})),
                          key=lambda nr: -(nr[1]["eval"][split].get("accuracy") or 0))
            if not runs:
                continue
            lines += ["", f"## {title}, {split} split ({ds}_{split})", "", HEADER]
            lines += [row(n, r, split) for n, r in runs]
    lines += ["", "Each recipe's exact flags are in recipes.json (`runs.<name>.train.command`).", ""]
    path.write_text("\n".join(lines))
