"""Run training recipes through the real CLI and score them on the fixed splits (bench/recipes/README.md).

    python bench/recipes/make_splits.py                      # once: output/recipes-data/
    OMP_NUM_THREADS=1 python bench/recipes/run.py --recipes lora-sst2,pt-sst2-lr0.1-constant-L20-text-b8 \
        --splits select [--note "what else ran"]
    python bench/recipes/run.py --list                        # the recipe names
    python bench/recipes/run.py --report                      # rewrite recipes.md from recipes.json only

Each recipe is a set of `softprompt train` flags on the same data budget (the 512 fixed training rows,
one epoch). A run is `softprompt train ...` then `softprompt eval --task classification` of the adapter
on each split asked for, each a child process of this script. Recorded per run: training wall time,
CPU time of the child (user + sys, from getrusage: less sensitive than wall time to the other jobs of a
shared machine), updates, final and mean-of-last-5-logged training loss, the load average before and
after; per split: accuracy and macro-F1, plain and batch-calibrated, and eval wall/CPU time.

Resumable: a recipe whose training result is already in the results file is not trained again, and a
split already scored is not scored again (delete the entry, or pass --force, to redo it). Results go
to bench/results/recipes.json (after every step) and recipes.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOFTPROMPT = os.environ.get("SOFTPROMPT", "/work/main/.venv/bin/softprompt")
DATA_DIR = "output/recipes-data"
RUNS_DIR = "output/recipes"
RESULTS = ROOT / "bench/results/recipes.json"
REPORT = ROOT / "bench/results/recipes.md"

INSTRUCTION = {  # the datasets' own instruction: the "text" init of the prompt recipes
    "sst2": "Classify the sentiment of this movie review as positive or negative.",
    "agnews": "Classify the topic of this news article as World, Sports, Business or Sci/Tech.",
}
CUTOFF = {"sst2": 128, "agnews": 256}  # no SST-2 row is cut at 128; 4 of 512 AG News rows at 256
COMMON = ["--model_name_or_path", "smollm2-135m-instruct", "--num_train_epochs", "1", "--seed", "42",
          "--save_steps", "0", "--logging_steps", "2", "--warmup_ratio", "0", "--overwrite_output_dir", "true",
          "--plot_loss", "false"]


def lora(ds: str, lr: float = 1e-3, sched: str = "constant", batch: int = 16, rank: int = 8) -> tuple[str, dict]:
    """The LoRA baseline: rank r on every linear layer but the LM head (softprompt's --lora_target all)."""
    name = f"lora-{ds}-r{rank}-lr{lr:g}-{sched}-b{batch}"
    flags = ["--finetuning_type", "lora", "--lora_rank", str(rank), "--lora_target", "all",
             "--learning_rate", f"{lr:g}", "--lr_scheduler_type", sched, "--per_device_train_batch_size", str(batch)]
    return name, {"dataset": ds, "flags": flags}


def pt(ds: str, lr: float, sched: str = "constant", length: int = 20, init: str = "text",
       batch: int = 8, reparam: str = "none") -> tuple[str, dict]:
    """A prompt-tuning recipe (``init`` label: the data's label words, then the instruction text; ``reparam``
    residual: Razdaibiedina et al.'s MLP with a skip connection while training)."""
    name = f"pt-{ds}-lr{lr:g}-{sched}-L{length}-{init}-b{batch}" + ("" if reparam == "none" else f"-{reparam}")
    flags = ["--finetuning_type", "prompt_tuning", "--num_virtual_tokens", str(length),
             "--prompt_tuning_init", init, "--learning_rate", f"{lr:g}", "--lr_scheduler_type", sched,
             "--per_device_train_batch_size", str(batch)]
    if init in ("text", "label"):
        flags += ["--prompt_tuning_init_text", INSTRUCTION[ds]]
    if reparam != "none":
        flags += ["--prompt_tuning_reparam", reparam]
    return name, {"dataset": ds, "flags": flags}


def prefix(ds: str, lr: float, sched: str = "constant", length: int = 20, batch: int = 8,
           projection: bool = False) -> tuple[str, dict]:
    """A prefix-tuning recipe: trained K/V of ``length`` virtual tokens at every layer (Li & Liang, 2021;
    P-Tuning v2's deep prompts), directly or through the 2-layer MLP (``projection``)."""
    name = f"prefix-{ds}-lr{lr:g}-{sched}-L{length}-b{batch}" + ("-proj" if projection else "")
    flags = ["--finetuning_type", "prefix_tuning", "--num_virtual_tokens", str(length), "--learning_rate", f"{lr:g}",
             "--lr_scheduler_type", sched, "--per_device_train_batch_size", str(batch)]
    if projection:
        flags += ["--prefix_projection", "true"]
    return name, {"dataset": ds, "flags": flags}


def zero_shot(ds: str) -> tuple[str, dict]:
    """The base model with no adapter (nothing trained): the floor."""
    return f"zeroshot-{ds}", {"dataset": ds, "flags": None}


def recipes() -> dict[str, dict]:
    """Every recipe by name, in priority order (the order --recipes all runs them)."""
    out = [lora("sst2"), pt("sst2", 1e-1), pt("sst2", 3e-2, "cosine"),
           lora("agnews"), pt("agnews", 1e-1), zero_shot("sst2"), zero_shot("agnews")]
    for ds in ("sst2", "agnews"):
        out += [pt(ds, lr, sched) for lr in (3e-2, 1e-1, 3e-1) for sched in ("constant", "cosine")]
        out += [pt(ds, 1e-1, length=50), pt(ds, 1e-1, init="sample_vocab"), pt(ds, 1e-1, init="random"),
                pt(ds, 1e-1, batch=16)]
        # one factor at a time around lr 3e-2 cosine (the SST-2 selection split's choice among the first two)
        out += [pt(ds, 3e-2, "cosine", length=50), pt(ds, 3e-2, "cosine", init="sample_vocab"),
                pt(ds, 3e-2, "cosine", batch=16)]
        # label-word init (Lester et al.), added with prompt_tuning_init label
        out += [pt(ds, 3e-2, "cosine", init="label"), pt(ds, 1e-1, init="label")]
        # around the label-init choice (lr 1e-1 constant): a larger rate, more updates, a longer prompt, residual
        out += [pt(ds, 3e-1, init="label"), pt(ds, 1e-1, init="label", batch=4),
                pt(ds, 1e-1, init="label", length=50), pt(ds, 1e-1, init="label", reparam="residual")]
        # deep prompts: the prefix-tuning method (K/V at every layer), the other prompt method with the capacity
        out += [prefix(ds, 1e-2), prefix(ds, 3e-2), prefix(ds, 1e-2, batch=4), prefix(ds, 1e-3, projection=True)]
        out += [prefix(ds, 1e-1), prefix(ds, 3e-2, batch=4), prefix(ds, 3e-2, length=50)]  # after 3e-2 beat 1e-2
    return dict(out)  # later duplicates keep their first position


def child(cmd: list[str], log: Path) -> dict:
    """Run cmd (stdout+stderr to log); its wall time and CPU time (user + sys of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {rc}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def train(name: str, recipe: dict) -> dict:
    """Train one recipe; the record of the run (times, updates, losses, the command)."""
    ds, out = recipe["dataset"], ROOT / RUNS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [SOFTPROMPT, "train", *COMMON, "--dataset", f"{ds}_train512", "--dataset_dir", DATA_DIR,
           "--cutoff_len", str(CUTOFF[ds]), "--output_dir", f"{RUNS_DIR}/{name}", *recipe["flags"]]
    times = child(cmd, out / "train.log")
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    losses = [row["loss"] for row in log if "loss" in row]
    steps = [row.get("step") or row.get("current_steps") for row in log if "loss" in row]
    results = json.loads((out / "train_results.json").read_text())
    return {"command": shlex.join(cmd[1:]), **times, "updates": steps[-1] if steps else None,
            "final_loss": round(losses[-1], 4) if losses else None,
            "last5_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
            "train_results": results, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def evaluate(name: str, recipe: dict, split: str) -> dict:
    """Score the recipe's adapter (or the bare model) on one split: accuracy, macro-F1, plain and calibrated."""
    ds, out = recipe["dataset"], ROOT / RUNS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    adapter = "none" if recipe["flags"] is None else f"{RUNS_DIR}/{name}"
    cmd = [SOFTPROMPT, "eval", "--model_name_or_path", "smollm2-135m-instruct", "--adapter_name_or_path", adapter,
           "--dataset", f"{ds}_{split}", "--dataset_dir", DATA_DIR, "--task", "classification",
           "--output_dir", f"{RUNS_DIR}/{name}/eval-{split}", "--save_predictions", "true"]
    times = child(cmd, out / f"eval-{split}.log")
    row = json.loads((out / f"eval-{split}" / "eval_results.json").read_text())["results"][0]
    keep = {k: v for k, v in row.items() if not isinstance(v, (list, dict)) and k not in ("model", "adapter")}
    return {"command": shlex.join(cmd[1:]), **times, **keep}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}, "sessions": []}


def save_results(results: dict, name: str | None = None) -> None:
    """Write the results file; with ``name``, only that run's entry is taken from ``results`` and merged into
    the file as it is now (two sweeps may run at once, each on its own recipes)."""
    if name is not None:
        entry, results = results["runs"][name], load_results()
        results["runs"][name] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS)
    from report import write_report  # bench/recipes/report.py, beside this file
    write_report(results, REPORT)


def run_one(results: dict, name: str, recipe: dict, splits: list[str], force: bool) -> None:
    """Train (unless recorded) and score on each split (unless recorded); save after each step."""
    entry = results["runs"].setdefault(name, {"dataset": recipe["dataset"], "flags": recipe["flags"], "eval": {}})
    if recipe["flags"] is not None and (force or "train" not in entry):
        print(f"[{name}] training ...", flush=True)
        entry["train"] = train(name, recipe)
        entry["eval"] = {}  # a new adapter: old scores no longer apply
        save_results(results, name)
        t = entry["train"]
        print(f"[{name}] trained: {t['updates']} updates, loss {t['final_loss']}, "
              f"{t['wall_s']} s wall, {t['cpu_s']} s CPU", flush=True)
    for split in splits:
        if split in entry["eval"] and not force:
            continue
        print(f"[{name}] scoring on {recipe['dataset']}_{split} ...", flush=True)
        entry["eval"][split] = evaluate(name, recipe, split)
        save_results(results, name)
        e = entry["eval"][split]
        print(f"[{name}] {split}: accuracy {e.get('accuracy')} macro-F1 {e.get('macro_f1')} "
              f"({e['wall_s']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="", help="comma-separated names (see --list), or 'all'")
    ap.add_argument("--splits", default="select", help="comma-separated: select, test")
    ap.add_argument("--note", default="", help="what else was running on the machine (recorded with the session)")
    ap.add_argument("--force", action="store_true", help="redo runs that already have results")
    ap.add_argument("--list", action="store_true", help="print the recipe names and flags, then exit")
    ap.add_argument("--report", action="store_true", help="rewrite recipes.md from recipes.json, then exit")
    args = ap.parse_args(argv)
    table = recipes()
    if args.list:
        for name, r in table.items():
            print(name, shlex.join(r["flags"] or ["(no training)"]))
        return 0
    results = load_results()
    if args.report:
        save_results(results)
        return 0
    if not (ROOT / DATA_DIR / "dataset_info.json").is_file():
        print(f"run: {DATA_DIR}/dataset_info.json is missing: run bench/recipes/make_splits.py first")
        return 2
    names = list(table) if args.recipes == "all" else [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"run: --recipes: unknown recipe {unknown[0]!r} (see --list)")
        return 2
    session = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join(["python", "bench/recipes/run.py", *(argv or sys.argv[1:])]),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "note": args.note,
               "load_at_start": round(os.getloadavg()[0], 2)}
    results = load_results()
    results["sessions"].append(session)
    save_results(results)
    for name in names:
        run_one(results, name, table[name], [s for s in args.splits.split(",") if s], args.force)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
