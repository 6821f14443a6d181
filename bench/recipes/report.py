"""bench/results/recipes.md from recipes.json: one table per dataset and split (see run.py)."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("select", "test")
DATASETS = {"sst2": "SST-2", "agnews": "AG News"}


def pct(x: float | None) -> str:
    """A percentage as softprompt eval writes it (already 0-100)."""
    return "" if x is None else f"{x:.2f}"


def row(name: str, run: dict, split: str) -> str:
    """One markdown table row: the recipe, its scores on split, its training cost."""
    e, t = run["eval"][split], run.get("train") or {}
    cells = [name, pct(e.get("accuracy")), pct(e.get("macro_f1")), pct(e.get("accuracy_calibrated")),
             pct(e.get("macro_f1_calibrated")), str(e.get("examples", "")), str(t.get("updates", "")),
             str(t.get("final_loss", "")), str(t.get("last5_loss", "")), str(t.get("wall_s", "")),
             str(t.get("cpu_s", "")), f"{t.get('load_before', '')} / {t.get('load_after', '')}", str(e.get("wall_s", ""))]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| recipe | accuracy % | macro-F1 % | accuracy % (calibrated) | macro-F1 % (calibrated) | examples "
          "| updates | final loss | mean of last 5 logged losses | train wall s | train CPU s | 1-min load before / after training "
          "| eval wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def summary(results: dict) -> list[str]:
    """Per dataset, the test split: LoRA against the best prompt recipe scored there, and the gap in points."""
    lines = []
    for ds, title in DATASETS.items():
        scored = {n: r for n, r in results.get("runs", {}).items() if r["dataset"] == ds and "test" in r.get("eval", {})}
        loras = [n for n in scored if n.startswith("lora-")]
        prompts = sorted((n for n in scored if n.startswith("pt-")), key=lambda n: -scored[n]["eval"]["test"]["accuracy"])
        if not loras or not prompts:
            continue
        lo, pr = scored[loras[0]], scored[prompts[0]]
        a, b = lo["eval"]["test"], pr["eval"]["test"]
        lines.append(f"- {title}, test ({a['examples']} rows): {loras[0]} {pct(a['accuracy'])}% accuracy / "
                     f"{pct(a['macro_f1'])}% macro-F1 ({lo['train']['cpu_s']} CPU s to train); {prompts[0]} "
                     f"{pct(b['accuracy'])}% / {pct(b['macro_f1'])}% ({pr['train']['cpu_s']} CPU s); prompt minus LoRA: "
                     f"{b['accuracy'] - a['accuracy']:+.2f} points accuracy, "
                     f"{b['macro_f1'] - a['macro_f1']:+.2f} macro-F1.")
    return (["", "## Summary: the chosen prompt recipe vs LoRA on the test split", ""] + lines) if lines else []


def write_report(results: dict, path: Path) -> None:
    """Write the markdown report: the sessions (commands, notes) then a table per dataset and split."""
    lines = ["# Recipes: prompt tuning vs LoRA on smollm2-135m-instruct, 512 training rows, one epoch", "",
             "Written by `bench/recipes/run.py` from `bench/results/recipes.json`; protocol in "
             "`bench/recipes/README.md`. Sessions (each command, OMP_NUM_THREADS, the note on what else ran):", ""]
    for s in results.get("sessions", []):
        lines.append(f"- {s['started']}: `OMP_NUM_THREADS={s.get('omp_num_threads')} {s['command']}`"
                     f" (1-min load at start {s.get('load_at_start')}){': ' + s['note'] if s.get('note') else ''}")
    lines += summary(results)
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
