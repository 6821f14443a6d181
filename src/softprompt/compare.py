"""``softprompt compare``: train several methods on the same data, seed and batch, for the same steps or
(``--time_budget``, ``--budget_tokens``) the same training time or tokens, and put the numbers that decide
between them side by side (``compare.md``, ``compare.json``, ``compare.png``).

Each method trains in its own ``softprompt train`` process, so its peak memory is its own (the
process's peak RSS; on a GPU, ``torch.cuda.max_memory_allocated`` from ``train_results.json``) and
its output folder ``output_dir/<method>/`` is an ordinary training run that can be reused. Then,
with the base model loaded once here, each result is loaded and asked one question (the switch
time) and, with ``--eval_dataset``, scored by the evaluation code.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from softprompt import outdir
from softprompt.arguments import parse_args
from softprompt.command_args import CompareArgs, TaskArgs
from softprompt.config import ArgumentError, DataArgs, GenerateArgs, MethodArgs, ModelArgs, TrainArgs
from softprompt.data import load_conversations
from softprompt.evaluate.run import eval_conversations, run_task
from softprompt.evaluate.tasks import choose_labels
from softprompt.inference import Predictor
from softprompt.methods import METHODS, read_adapter
from softprompt.files import atomic_write_text
from softprompt.model import load_model
from softprompt.report import number, pyplot
from softprompt.train.loop import fresh_output_dir

log = logging.getLogger("softprompt")
RUN_FILES = {"trainer_log.jsonl", "train_results.json", "training_args.yaml", "training_loss.png", outdir.MANIFEST}
"""What a run writes beside its checkpoint; not counted in the checkpoint's bytes."""
METRIC = {"classification": "accuracy", "generation": "rouge_l", "loss": "loss"}
REPORT_FILES = ("compare.json", "compare.md", "compare.png")
BUDGET_FLAGS = {"time_budget": "max_train_seconds", "budget_tokens": "max_train_tokens"}
"""compare's budget flags and the training flag each one sets."""


@dataclass
class ComparePlan:
    model: ModelArgs
    data: DataArgs
    train: TrainArgs
    task: TaskArgs
    compare: CompareArgs
    train_argv: list[str]
    """The training flags as given, without compare's own, --finetuning_type and --output_dir."""
    train_config: dict[str, Any] | None
    """The YAML config's training keys, if a config was given (the same keys left out)."""
    command: str
    """The command line, for the report."""


def parse_compare(argv: list[str]) -> ComparePlan:
    """Compare's flags plus every training flag; each method's own flags apply to it alone."""
    classes = [ModelArgs, DataArgs, MethodArgs, TrainArgs, TaskArgs, CompareArgs]
    (model, data, _, targs, task, cargs), parsed = parse_args(argv, classes, "softprompt compare",
                                                             "Train several methods alike and compare them.")
    unknown = [m for m in cargs.method_list() + list(cargs.learning_rates()) if m not in METHODS]
    if unknown:
        raise ArgumentError(f"--methods / --method_learning_rates: unknown method {unknown[0]!r} "
                            f"(choose from {', '.join(METHODS)})")
    cargs.methods = cargs.methods or ",".join(METHODS)
    if targs.learning_rate is not None and len(set(cargs.method_list()) - set(cargs.learning_rates())) > 1:
        log.warning("compare: --learning_rate %g applies to every method not in --method_learning_rates; leave it "
                    "out for each method's own recipe", targs.learning_rate)
    _take_budget(cargs, targs)
    own = {f.name for cls in (TaskArgs, CompareArgs) for f in fields(cls)} | {"finetuning_type", "output_dir",
                                                                              *BUDGET_FLAGS.values()}
    config = {k: v for k, v in parsed.yaml.items() if k not in own} if parsed.config else None
    return ComparePlan(model, data, targs, task, cargs, parsed.argv_without(own, config=False), config,
                       " ".join(["softprompt compare", *argv]))


def _take_budget(cargs: CompareArgs, targs: TrainArgs) -> None:
    """Training's own budget flags, given to compare, are its --time_budget / --budget_tokens."""
    for own, train_flag in BUDGET_FLAGS.items():
        given = getattr(targs, train_flag)
        if given is not None and getattr(cargs, own) not in (None, given):
            raise ArgumentError(f"--{own} and --{train_flag} disagree: give one")
        if given is not None:
            setattr(cargs, own, given)
    CompareArgs.__post_init__(cargs)  # the two budgets are still exclusive
    if cargs.budget() is not None and targs.warmup_steps:
        raise ArgumentError("--warmup_steps counts updates, which a budget leaves open: use --warmup_ratio, a "
                            "fraction of the budget")
    if cargs.budget() is not None and targs.max_steps > 0:
        log.info("compare: --%s decides when each method stops; --max_steps %d is not used",
                 "time_budget" if cargs.time_budget is not None else "budget_tokens", targs.max_steps)


def _budget_flags(compare: CompareArgs) -> list[str]:
    """The flags that give one method's training the budget (none: the same steps for all)."""
    budget = compare.budget()
    if budget is None:
        return []
    flag = "--max_train_seconds" if budget[0] == "time" else "--max_train_tokens"
    return [flag, repr(budget[1]), "--max_steps", "-1"]


def _train_command(plan: ComparePlan, method: str, out: Path) -> list[str]:
    argv = list(plan.train_argv)
    if plan.train_config is not None:  # the YAML config, minus compare's keys
        path = Path(plan.train.output_dir) / "logs" / "train_config.yaml"
        outdir.claim(plan.train.output_dir, "logs/train_config.yaml")
        atomic_write_text(path, yaml.safe_dump(plan.train_config, sort_keys=False))
        argv.insert(0, str(path))
    lr = plan.compare.learning_rates().get(method)
    extra = ["--learning_rate", repr(lr)] if lr is not None else []
    return [sys.executable, "-m", "softprompt", "train", *argv, *extra, *_budget_flags(plan.compare),
            "--finetuning_type", method,
            "--output_dir", str(out), "--overwrite_output_dir", "true"]


def _train(plan: ComparePlan, method: str, out: Path, bar) -> dict[str, Any]:
    """Run one method's training process; its figures, or its error line."""
    log_path = Path(plan.train.output_dir) / "logs" / f"{method}.log"
    outdir.claim(plan.train.output_dir, f"logs/{method}.log", method)  # listed before the run writes them
    start = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(_train_command(plan, method, out), stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "TQDM_DISABLE": "1"})
        shown = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if _progress(out) != shown:
                shown = _progress(out)
                bar.set_postfix_str(f"{method}: {shown}")
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {"wall_seconds": round(time.time() - start, 1), "peak_rss_bytes": usage.ru_maxrss * 1024}
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln]
        return {**row, "error": (errors or lines or ["no output"])[-1].strip(), "log": str(log_path)}
    results = json.loads((out / "train_results.json").read_text())
    history = [json.loads(ln) for ln in (out / "trainer_log.jsonl").read_text().splitlines() if ln.strip()]
    losses = [(h["current_steps"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["current_steps"], h["eval_loss"]) for h in history if "eval_loss" in h]
    row.update(
        trainable_params=results["trainable_params"],
        trainable_percent=round(100 * results["trainable_params"] / results["all_params"], 4),
        checkpoint_bytes=sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name not in RUN_FILES),
        train_tokens_per_second=results["train_tokens_per_second"], steps=results["global_step"],
        train_seconds=results.get("train_seconds"), train_tokens=results.get("train_tokens"),
        final_train_loss=losses[-1][1] if losses else None, eval_loss=results["eval_loss"],
        loss_curve=losses, eval_curve=evals, log=str(log_path),
    )
    if "budget_used" in results:  # a budgeted run: how it stopped, and its losses over training time
        stops = [ln.split("stopped: ", 1)[1] for ln in log_path.read_text(errors="replace").splitlines()
                 if "stopped: " in ln]
        row.update(budget_used=results["budget_used"], stopped=stops[-1] if stops else None,
                   loss_curve_seconds=[(h["train_seconds"], h["loss"]) for h in history if "train_seconds" in h])
    if "peak_gpu_memory_bytes" in results:
        row["peak_gpu_memory_bytes"] = results["peak_gpu_memory_bytes"]
    return row


def _progress(out: Path) -> str:
    try:
        last = (out / "trainer_log.jsonl").read_text().strip().splitlines()[-1]
        row = json.loads(last)
        return f"step {row['current_steps']}/{row['total_steps']}"
    except (OSError, IndexError, ValueError, KeyError):
        return "starting"


def _switch_and_score(plan: ComparePlan, lm, out: Path, question: list[dict], eval_data: DataArgs | None, convs,
                      labels) -> dict[str, Any]:
    """Seconds from the saved result to its first answer (the base already in memory), then the metric."""
    template = plan.data.template
    own_copy = copy.deepcopy(lm) if _changes_base(out) else None  # LoRA edits its base
    start = time.time()
    predictor = Predictor(own_copy or lm, str(out), template, shared_base=False)
    predictor.chat(question, GenerateArgs(max_new_tokens=8))
    row: dict[str, Any] = {"switch_seconds": round(time.time() - start, 3)}
    if eval_data is not None:
        metrics, _ = run_task(predictor, convs, eval_data, plan.task, GenerateArgs(max_new_tokens=32),
                              plan.train.per_device_eval_batch_size, labels)
        key = METRIC[plan.task.task]
        row.update(metric=key, metric_value=metrics.get(key))
    return row


def _learning_rate(plan: ComparePlan, method: str) -> float:
    """The rate ``method`` trains with: from --method_learning_rates, else --learning_rate, else its recipe."""
    given = plan.compare.learning_rates().get(method, plan.train.learning_rate)
    return given if given is not None else METHODS[method].recipe.learning_rate


def _changes_base(folder: Path) -> bool:
    """Whether the result in ``folder`` is an adapter that changes its base's weights (LoRA)."""
    return (folder / "adapter_config.json").is_file() and read_adapter(folder).spec.kind == "weights"


def run_compare(plan: ComparePlan) -> dict[str, Any]:
    """Train, time and score every method; write compare.{json,md,png}; return the report."""
    methods = plan.compare.method_list()
    root = fresh_output_dir(plan.train, plan.model, plan.data, {*REPORT_FILES, *methods}, "logs")
    convs, labels, eval_data = [], [], None
    if plan.compare.eval_dataset:
        eval_data = DataArgs(**{**plan.data.__dict__, "dataset": plan.compare.eval_dataset, "val_size": 0.0,
                                "max_samples": plan.compare.eval_max_samples})
        convs = eval_conversations(eval_data, plan.train.seed)
        labels = choose_labels(convs, plan.task.labels()) if plan.task.task == "classification" else []
    question = load_conversations(plan.data, plan.train.seed)[0].prompt_and_answer()[0]
    rows: list[dict[str, Any]] = []
    lm = None
    with tqdm(total=2 * len(methods), desc="compare", unit="phase") as bar:
        for method in methods:
            bar.set_description(f"compare: training {method}")
            out = root / method
            row = {"method": method, "learning_rate": _learning_rate(plan, method),
                   "output_dir": str(out), **_train(plan, method, out, bar)}
            bar.update(1)
            if "error" not in row:
                bar.set_description(f"compare: loading {method}" + (" and scoring it" if convs else ""))
                if lm is None:  # loaded once; a first answer warms it up, so no method pays for that
                    lm = load_model(plan.model.model_name_or_path, plan.model.cache_dir,
                                    quantization_bit=plan.model.quantization_bit)
                    Predictor(lm, None, plan.data.template).chat(question, GenerateArgs(max_new_tokens=8))
                row.update(_switch_and_score(plan, lm, out, question, eval_data, convs, labels))
            else:
                log.warning("compare: %s failed: %s (log: %s)", method, row["error"], row["log"])
            bar.update(1)
            rows.append(row)
    report = {"base_model": plan.model.model_name_or_path, "dataset": plan.data.dataset,
              "eval_dataset": plan.compare.eval_dataset, "task": plan.task.task if convs else None,
              "device": _device(), "command": plan.command, "equal": _equal(plan), "methods": rows}
    outdir.claim(root, *REPORT_FILES)
    atomic_write_text(root / "compare.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(root / "compare.md", compare_markdown(report))
    plot_compare(report, root / "compare.png")
    return report


def _equal(plan: ComparePlan) -> dict[str, Any]:
    """What every method got the same of: {"kind": "time" | "tokens" | "steps" | "epochs", "value", "text"}."""
    budget = plan.compare.budget()
    if budget is not None:
        return dict(zip(("kind", "value", "text"), budget))
    if plan.train.max_steps > 0:
        return {"kind": "steps", "value": plan.train.max_steps, "text": f"{plan.train.max_steps} updates"}
    epochs = plan.train.num_train_epochs
    return {"kind": "epochs", "value": epochs, "text": f"{epochs:g} epochs"}


def _device() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _mb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def _size(n: int) -> str:
    """Bytes on disk, in the unit that reads best."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def compare_markdown(report: dict[str, Any]) -> str:
    """One row per method; the command and the device on top."""
    gpu = any("peak_gpu_memory_bytes" in r for r in report["methods"])
    metric = next((r["metric"] for r in report["methods"] if "metric" in r), None)
    head = ["method", "lr", "trainable params", "% of model", "checkpoint on disk",
            "peak GPU MB" if gpu else "peak RSS MB", "updates", "train s", "train tokens", "train tokens/s", "wall s",
            "final train loss", "validation loss", *([f"{metric} ({report['eval_dataset']})"] if metric else []),
            "switch s"]
    equal = report.get("equal") or {}
    lines = [f"# compare on {report['dataset']} ({report['base_model']}, {report['device']})", "",
             f"`{report['command']}`", "", _equal_line(equal), "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in report["methods"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['learning_rate']:g} | failed: {r['error']} |"
                         + " |" * (len(head) - 3))
            continue
        mem = r.get("peak_gpu_memory_bytes", r["peak_rss_bytes"])
        value = r.get("metric_value")
        cells = [r["method"], f"{r['learning_rate']:g}", f"{r['trainable_params']:,}", f"{r['trainable_percent']:.3f}",
                 _size(r["checkpoint_bytes"]), _mb(mem), str(r["steps"]),
                 "" if r.get("train_seconds") is None else f"{r['train_seconds']:.1f}",
                 f"{r['train_tokens']:,}" if r.get("train_tokens") is not None else "",
                 f"{r['train_tokens_per_second']:.0f}",
                 f"{r['wall_seconds']:.0f}", number(r["final_train_loss"]), number(r["eval_loss"]),
                 *([number(value)] if metric else []), f"{r['switch_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _equal_line(equal: dict[str, Any]) -> str:
    """The table's header line: what every method got the same of."""
    if equal.get("kind") == "time":
        return (f"**equal time budget: {equal['text']}** per method (time in updates; each stops when it runs out, "
                "its learning-rate schedule runs on the fraction used), same data order, seed and batch")
    if equal.get("kind") == "tokens":
        return (f"**equal token budget: {equal['text']}** (real tokens) per method, same data order, seed and "
                "batch")
    return f"**equal steps: {equal.get('text', '?')}** per method, same data order, seed and batch"




def plot_compare(report: dict[str, Any], path: Path) -> Path:
    """Loss curves on top; a bar per method for each figure below."""
    plt = pyplot()

    ok = [r for r in report["methods"] if "error" not in r]
    bars = [("trainable params", "trainable_params", True), ("checkpoint MB", "checkpoint_bytes", True),
            ("peak memory MB", "peak_rss_bytes", False), ("train tokens/s", "train_tokens_per_second", False),
            ("updates", "steps", False), ("wall s", "wall_seconds", False), ("switch s", "switch_seconds", False)]
    if any("metric" in r for r in ok):
        bars.append((ok[0]["metric"], "metric_value", False))
    fig = plt.figure(figsize=(14, 8.5), dpi=100)
    grid = fig.add_gridspec(3, 4)
    ax = fig.add_subplot(grid[0, :])
    timed = (report.get("equal") or {}).get("kind") == "time"  # equal time: losses over training time
    for i, r in enumerate(ok):
        color = f"C{i}"
        curve = r.get("loss_curve_seconds") if timed else r["loss_curve"]
        if curve:
            ax.plot(*zip(*curve), color=color, label=r["method"])
        if r["eval_curve"] and not timed:
            ax.plot(*zip(*r["eval_curve"]), "o--", color=color, alpha=0.7)
        elif r["eval_curve"] and curve:  # the final validation loss, at the end of the method's time
            ax.plot([curve[-1][0]], [r["eval_curve"][-1][1]], "o", color=color, alpha=0.7)
    ax.set_xlabel("seconds in updates" if timed else "update")
    ax.set_yscale("log")  # one method's first steps can sit far above the others
    ax.set_ylabel("loss (dots: validation)" if timed else "loss (dashed: validation)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=len(ok) or 1, fontsize=8)
    for k, (title, key, log_scale) in enumerate(bars):
        bax = fig.add_subplot(grid[1 + k // 4, k % 4])
        names = [r["method"] for r in ok]
        values = [r.get("peak_gpu_memory_bytes", r[key]) if key == "peak_rss_bytes" else r.get(key) or 0 for r in ok]
        if key in ("checkpoint_bytes", "peak_rss_bytes"):
            values = [v / 2**20 for v in values]
        bax.bar(names, values, color=[f"C{i}" for i in range(len(ok))])
        if log_scale:
            bax.set_yscale("log")
        bax.set_title(title, fontsize=9)
        bax.tick_params(axis="x", labelrotation=45, labelsize=7)
    equal = (report.get("equal") or {}).get("text")
    fig.suptitle(f"compare on {report['dataset']} ({report['base_model']}, {report['device']})"
                 + (f": equal {(report.get('equal') or {}).get('kind')}, {equal}" if equal else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
