"""``softprompt sweep``: train one prompt per combination of lengths, inits and learning rates on
the same budget, score each on the validation split, and compare them in a table and a plot.

It composes the two jobs below it, :func:`softprompt.train.train` and the evaluation tasks; only
the CLI sits above it. Every run's adapter stays on disk under ``output_dir/<run name>/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt import outdir
from softprompt.arguments import parse_args
from softprompt.command_args import SweepArgs, TaskArgs
from softprompt.config import ArgumentError, DataArgs, GenerateArgs, MethodArgs, ModelArgs, TrainArgs
from softprompt.evaluate.run import COLUMNS, eval_conversations, run_task
from softprompt.evaluate.tasks import choose_labels
from softprompt.inference import Predictor
from softprompt.files import atomic_write_text
from softprompt.methods import METHODS, resolve
from softprompt.model import load_model
from softprompt.report import number, pyplot
from softprompt.train import TrainingError, train
from softprompt.train.loop import fresh_output_dir

log = logging.getLogger("softprompt")
GOAL = {"classification": ("accuracy", max), "generation": ("rouge_l", max), "loss": ("eval_loss", min)}
"""Per task: the number that names the best run, and whether higher or lower is better."""
REPORT_FILES = ("sweep_results.json", "sweep_results.md", "sweep.png")


@dataclass
class SweepPlan:
    model: ModelArgs
    data: DataArgs
    method: MethodArgs
    train: TrainArgs
    task: TaskArgs
    gen: GenerateArgs
    """Greedy decoding for --task generation (max_new_tokens from the sweep's flags)."""
    axes: dict[str, list[Any]]
    """Each swept argument given (in SweepArgs' order) and its values, in the order given."""


def parse_sweep(argv: list[str]) -> SweepPlan:
    """The train flags plus the eval flags; swept arguments are lists (SweepArgs), the method's and training's
    arguments hold their first values until each run takes its own."""
    (model, data, method, targs, task, sweep), _ = parse_args(
        argv, [ModelArgs, DataArgs, MethodArgs, TrainArgs, TaskArgs, SweepArgs], "softprompt sweep",
        "Train one soft prompt per combination (comma-separated num_virtual_tokens, prompt_tuning_init, "
        "learning_rate) and compare them on the validation split.",
    )
    method, axes = resolve(method), sweep.axes()  # arguments of other methods: warned about once, here
    if not data.val_size:
        raise ArgumentError("sweep compares runs on a validation split: set --val_size (e.g. 0.1 or 50)")
    gen = GenerateArgs(max_new_tokens=sweep.max_new_tokens, seed=targs.seed)
    return SweepPlan(model, data, method, targs, task, gen, axes)


def combinations(plan: SweepPlan) -> list[tuple[str, MethodArgs, TrainArgs]]:
    """(run name, method args, train args) for every combination, each writing to its own folder."""
    names = list(plan.axes)
    runs = []
    for values in itertools.product(*(plan.axes[n] for n in names)):
        combo = dict(zip(names, values))
        n = combo.get("num_virtual_tokens", plan.method.num_virtual_tokens)
        init = combo.get("prompt_tuning_init", plan.method.init)
        lr = combo.get("learning_rate", plan.train.learning_rate)
        lr = lr if lr is not None else METHODS[plan.method.finetuning_type].recipe.learning_rate
        text = plan.method.prompt_tuning_init_text if init in ("text", "label") else None  # else init becomes text
        method = dataclasses.replace(plan.method, num_virtual_tokens=n, prompt_tuning_init=init,
                                     prompt_tuning_init_text=text)
        name = f"L{n or 'auto'}-{init.replace(':', '_')}-lr{lr:g}"
        targs = dataclasses.replace(plan.train, learning_rate=lr, output_dir=str(Path(plan.train.output_dir) / name),
                                    overwrite_output_dir=True)
        runs.append((name, method, targs))
    return runs


def run_sweep(plan: SweepPlan) -> dict[str, Any]:
    """Train and score every combination; write sweep_results.{json,md} and sweep.png; return the report."""
    runs = combinations(plan)
    out = fresh_output_dir(plan.train, plan.model, plan.data, {*REPORT_FILES, *(name for name, _, _ in runs)})
    task = plan.task.task
    lm = (load_model(plan.model.model_name_or_path, plan.model.cache_dir, quantization_bit=plan.model.quantization_bit)
          if task != "loss" else None)
    convs = eval_conversations(plan.data, plan.train.seed) if lm is not None else []
    labels = choose_labels(convs, plan.task.labels()) if task == "classification" else []
    rows: list[dict[str, Any]] = []
    for i, (name, method, targs) in enumerate(runs, 1):
        log.info("sweep run %d/%d: %s", i, len(runs), name)
        row: dict[str, Any] = {"run": name, "num_virtual_tokens": method.num_virtual_tokens,
                               "init": method.prompt_tuning_init, "learning_rate": targs.learning_rate,
                               "adapter": targs.output_dir, "train_loss": None, "eval_loss": None, "steps": None,
                               "train_runtime_s": 0.0}
        outdir.claim(out, name)  # listed before the run writes into it
        try:
            result = train(plan.model, plan.data, method, targs)
        except TrainingError as err:  # e.g. a learning rate that diverges: record it, go on with the others
            log.warning("sweep run %s failed: %s", name, err)
            rows.append({**row, "error": str(err)})
            continue
        config = json.loads((result.output_dir / "adapter_config.json").read_text())
        row.update(num_virtual_tokens=config.get("num_virtual_tokens"), train_loss=result.train_loss,
                   eval_loss=result.eval_loss, steps=result.global_step, train_runtime_s=round(result.runtime_s, 1))
        if lm is not None:
            start = time.time()
            metrics, _ = run_task(Predictor(lm, targs.output_dir, plan.data.template), convs, plan.data,
                                  plan.task, plan.gen, plan.train.per_device_eval_batch_size, labels)
            row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                       eval_runtime_s=round(time.time() - start, 1))
        rows.append(row)
    key, pick = GOAL[task]
    scored_rows = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    best = pick(scored_rows, key=lambda r: r[key])["run"] if scored_rows else None
    report = {"task": task, "metric": key, "best": best, "axes": plan.axes, "dataset": plan.data.dataset,
              "base_model": plan.model.model_name_or_path, "runs": rows}
    outdir.claim(out, *REPORT_FILES)
    atomic_write_text(out / "sweep_results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "sweep_results.md", sweep_markdown(report))
    plot_sweep(report, out / "sweep.png")
    return report


def sweep_markdown(report: dict[str, Any]) -> str:
    """A table, one row per run, and the best run named under it."""
    extra = [] if report["task"] == "loss" else COLUMNS[report["task"]][:2]
    head = ["run", "virtual tokens", "init", "learning rate", "steps", "train loss", "validation loss",
            *(h for _, h in extra), "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * (len(head) - 3)]
    for r in report["runs"]:
        cells = [r["run"] + (" (failed)" if "error" in r else ""), number(r["num_virtual_tokens"]), r["init"],
                 f"{r['learning_rate']:g}", number(r["steps"]),
                 number(r["train_loss"]), number(r["eval_loss"]), *(number(r.get(k)) for k, _ in extra),
                 f"{r['train_runtime_s']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + f"\n\nbest by {report['metric']}: **{report['best']}**\n"




def plot_sweep(report: dict[str, Any], path: Path) -> Path:
    """Metric vs prompt length, one line per init (and learning rate); validation loss beside it."""
    plt = pyplot()

    keys = ["eval_loss"] + ([report["metric"]] if report["metric"] != "eval_loss" else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.2), dpi=110, squeeze=False)
    many_lr = len({r["learning_rate"] for r in report["runs"]}) > 1
    for ax, key in zip(axes[0], keys):
        groups: dict[str, list[tuple[int, float]]] = {}
        for r in report["runs"]:
            if r.get(key) is not None and r["num_virtual_tokens"] is not None:
                label = r["init"] + (f", lr {r['learning_rate']:g}" if many_lr else "")
                groups.setdefault(label, []).append((r["num_virtual_tokens"], r[key]))
        for label, points in groups.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, "o-", label=label)
        lengths = sorted({r["num_virtual_tokens"] for r in report["runs"] if r["num_virtual_tokens"] is not None})
        if lengths and lengths[-1] / max(lengths[0], 1) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("prompt length (virtual tokens)")
        ax.set_ylabel("validation loss" if key == "eval_loss" else f"validation {key.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
        ax.legend(title="init")
    fig.suptitle(f"sweep on {report['dataset']}: best {report['best']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
