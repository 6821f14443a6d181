"""Checkpoints a run can resume from, written atomically, and resuming from them.

A ``checkpoint-N`` folder holds what the method saves (a PEFT adapter, or a model folder for
full / freeze) plus the training state, with Hugging Face Trainer's file names:

    trainer_state.json     the run state (step, per-step losses, validation bookkeeping), the arguments
                           that fix the data order
    optimizer.pt           the optimizer's state dict
    scheduler.pt           the learning-rate scheduler's state dict
    rng_state.pth          the Python and torch (CPU, CUDA) random states
    trainable_state.pt     every trainable parameter by name (p-tuning saves its *encoded* prompt as the
                           adapter, so the adapter files alone cannot restart its encoder), plus the best
                           adapter state kept for --load_best_model_at_end

Everything is written into ``.checkpoint-N.XXXX/`` beside the final name and renamed into place
in one step, then older checkpoints beyond ``--save_total_limit`` are removed: a kill at any
moment leaves the previous complete checkpoint, or the new one. Leftover temporary folders are
removed when a run resumes.

Resuming restores the trainable parameters, optimizer, scheduler, run state and RNG state; the
data order is restored by replaying the seeded loader's first ``step * gradient_accumulation_steps``
micro-batches (collation only, no model work).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from softprompt import outdir
from softprompt.checkpoint import CheckpointError
from softprompt.config import ArgumentError, TrainArgs
from softprompt.files import atomic_folder, atomic_write_text, one_line
from softprompt.train.state import RunState

log = logging.getLogger("softprompt")

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RNG_NAME = "rng_state.pth"
TRAINABLE_NAME = "trainable_state.pt"
STATE_FILES = (STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, RNG_NAME, TRAINABLE_NAME)
DATA_ORDER_ARGS = ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "group_by_prefix")
"""Arguments that fix which examples each step sees; a resumed run that changes them warns."""
Rng = dict[str, Any]
"""The Python and torch random states, as ``rng_state.pth`` holds them."""


# ---------------------------------------------------------------------------------------------
# finding a checkpoint


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _missing(folder: Path) -> str | None:
    """The first training-state file ``folder`` lacks (None: it has them all)."""
    return next((name for name in STATE_FILES if not (folder / name).is_file()), None)


def _newest_complete(output_dir: str) -> Path:
    """The newest checkpoint-N of ``output_dir`` that has every training-state file; the newer, incomplete ones
    are named in one log line."""
    found = checkpoints(output_dir)
    if not found:
        raise ArgumentError(f"--resume_from_checkpoint true: no checkpoint-N folder with a {STATE_NAME} "
                            f"in --output_dir {output_dir} (set --save_steps to write them)")
    complete = [p for p in found if _missing(p) is None]
    newest = found[-1]
    if not complete:
        raise ArgumentError(f"--resume_from_checkpoint true: no complete checkpoint-N folder in --output_dir "
                            f"{output_dir} ({newest.name} has no {_missing(newest)})")
    if complete[-1] != newest:
        log.warning("--resume_from_checkpoint true: %s is incomplete (no %s); resuming from %s, the newest complete "
                    "checkpoint", newest.name, _missing(newest), complete[-1].name)
    return complete[-1]


def resume_folder(args: TrainArgs) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names (``true``: the newest complete one in output_dir), checked
    (its files, its trainer_state.json) before anything is loaded; None when not resuming."""
    value = args.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() == "true":
        folder = _newest_complete(args.output_dir)
    else:
        folder = Path(value)
        if not folder.is_dir():
            raise ArgumentError(f"--resume_from_checkpoint {value}: folder not found (give a checkpoint-N folder or "
                                f"true)")
        if _missing(folder):
            raise CheckpointError(f"{folder}: no {_missing(folder)}; not a checkpoint softprompt can resume from")
    _read_state(folder, args.max_steps if args.max_steps > 0 else None)
    return folder


# ---------------------------------------------------------------------------------------------
# saving


def _rng_state() -> Rng:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _state_json(state: RunState, args: TrainArgs) -> dict[str, Any]:
    """``trainer_state.json``: the saved part of the run state (read back by :func:`_run_state`)."""
    return {
        "global_step": state.step, "losses": state.losses, "pending": state.pending,
        "eval_loss": state.eval_loss, "train_tokens": state.train_tokens,
        "train_seconds": state.train_seconds,
        "best_loss": state.best_loss if state.best_step else None, "best_step": state.best_step,
        "evals_without_improvement": state.evals_without_improvement,
        "args": {name: getattr(args, name) for name in DATA_ORDER_ARGS},
    }


def write_training_state(folder: Path, state: RunState, model: torch.nn.Module, optimizer, scheduler,
                         args: TrainArgs) -> None:
    """The training-state files (see the module docstring) into ``folder``."""
    trainable = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"params": trainable, "best_state": state.best_state}, folder / TRAINABLE_NAME)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
    torch.save(scheduler.state_dict(), folder / SCHEDULER_NAME)
    torch.save(_rng_state(), folder / RNG_NAME)
    (folder / STATE_NAME).write_text(json.dumps(_state_json(state, args), indent=1) + "\n")


def save_checkpoint(outputs, state: RunState, model: torch.nn.Module, optimizer, scheduler,
                    args: TrainArgs) -> Path | None:
    """Write ``checkpoint-{step}`` atomically: the method's own files (``outputs.save_adapter``) and the
    training state go into a temporary folder that is then renamed; older checkpoints beyond
    --save_total_limit are removed after that. Only the main process writes."""
    if not outputs.main:
        return None
    final = outputs.dir / f"checkpoint-{state.step}"
    if final.exists():
        outdir.remove_own(outputs.dir, final.name)  # re-saving a step after resuming from an older one
    outdir.claim(outputs.dir, final.name)  # listed before anything of it is written (its temporary folder too)

    def write(staged: Path) -> None:
        outputs.save_adapter(staged)  # the adapter or model folder, as the method writes it
        write_training_state(staged, state, model, optimizer, scheduler, args)
        outdir.claim(outputs.dir, *(f"{final.name}/{p.relative_to(staged)}" for p in staged.rglob("*")))

    atomic_folder(final, write, existing="merge")  # "merge": a file softprompt did not write in it stays
    rotate(outputs.dir, args.save_total_limit)
    return final


def rotate(output_dir: Path, limit: int | None) -> None:
    """Keep the newest ``limit`` checkpoint-N folders (all when ``limit`` is None); of the older ones, remove
    what softprompt wrote."""
    if limit:
        for old in checkpoints(output_dir)[:-limit]:
            outdir.remove_own(output_dir, old.name)


# ---------------------------------------------------------------------------------------------
# resuming


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and runtime errors for a damaged file
        raise CheckpointError(f"{path}: unreadable ({one_line(exc)})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_problem(state: Any, total: int | None) -> str | None:
    """What is wrong with the contents of a trainer_state.json (as :func:`_state_json` writes it) for a run of
    ``total`` updates (None: not known yet), or None."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    step = state.get("global_step")
    if not _is_count(step):
        return f"'global_step' must be a non-negative integer, got {one_line(repr(step), 40)}"
    if total is not None and step > total:
        return f"'global_step' {step} is beyond this run's {total} updates (--max_steps / --num_train_epochs)"
    for key in ("losses", "pending"):
        values = state.get(key, [])
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            return f"'{key}' must be a list of finite numbers"
    if "losses" in state and len(state["losses"]) != step:
        return f"'losses' holds {len(state['losses'])} values for 'global_step' {step}"
    for key in ("eval_loss", "best_loss", "train_seconds"):
        if state.get(key) is not None and not _is_number(state[key]):
            return f"'{key}' must be a number or null, got {one_line(repr(state[key]), 40)}"
    for key in ("train_tokens", "best_step", "evals_without_improvement"):
        if state.get(key) is not None and not _is_count(state[key]):
            return f"'{key}' must be a non-negative integer, got {one_line(repr(state[key]), 40)}"
    if not isinstance(state.get("args", {}), dict):
        return "'args' must be an object"
    return None


def _read_state(folder: Path, total: int | None = None) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, checked (hand-edited ones included); ``total``: the run's updates,
    which its step may not pass."""
    path = folder / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(exc, 120)})") from None
    problem = _state_problem(state, total)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


def _restore_params(folder: Path, model: torch.nn.Module) -> Any:
    """Copy the saved trainable parameters into ``model``; returns the saved best adapter state."""
    saved = _load(folder / TRAINABLE_NAME)
    params = saved.get("params") if isinstance(saved, dict) else None
    best = saved.get("best_state") if isinstance(saved, dict) else None
    if not _tensors(params) or not (best is None or _tensors(best)):
        raise CheckpointError(f"{folder / TRAINABLE_NAME}: expected a dict with 'params' (and 'best_state' or None), "
                              f"each a dict of tensors")
    ours = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(ours):
        extra = sorted(set(params) ^ set(ours))[0]
        raise ArgumentError(f"--resume_from_checkpoint {folder}: its trainable parameters differ from this run's "
                            f"(e.g. {extra!r}); resume with the same model and method arguments")
    with torch.no_grad():
        for name, p in ours.items():
            if params[name].shape != p.shape:
                raise ArgumentError(f"--resume_from_checkpoint {folder}: {name} has shape {tuple(params[name].shape)}, "
                                    f"this run's has {tuple(p.shape)}; resume with the same arguments")
            p.copy_(params[name])
    return best


def restore(folder: Path, model: torch.nn.Module, optimizer, scheduler, args: TrainArgs,
            main: bool, total: int | None = None) -> tuple[RunState, Rng]:
    """Load a checkpoint's parameters, optimizer and scheduler into this run (``model`` unwrapped) and
    return its run state, with the random state to put back once the loop starts (:func:`continue_from`).
    On the main process, keep output_dir's log up to the checkpoint's step (the state's history) and
    remove temporary folders a kill left. Call before output_dir's log is opened. ``total``: the run's updates,
    which the checkpoint's step may not pass."""
    saved = _read_state(folder, total)
    best_state = _restore_params(folder, model)
    rng = _load_rng(folder / RNG_NAME)
    try:
        optimizer.load_state_dict(_load(folder / OPTIMIZER_NAME))
        scheduler.load_state_dict(_load(folder / SCHEDULER_NAME))
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{folder}: optimizer or scheduler state does not fit this run ({exc})") from None
    step = saved["global_step"]
    for name, value in saved.get("args", {}).items():
        if getattr(args, name, value) != value:
            log.warning("--%s was %s when checkpoint-%d was written and is %s now: the data order differs from "
                        "the interrupted run's", name, value, step, getattr(args, name))
    state = _run_state(saved, best_state)
    if main:
        _clean_temporaries(Path(args.output_dir))
        state.history = _trim_log(Path(args.output_dir) / "trainer_log.jsonl", step)
    log.info("resuming from %s at step %d", folder, step)
    return state, rng


def _load_rng(path: Path) -> Rng:
    """``rng_state.pth``, checked by putting each state in place and back."""
    rng = _load(path)
    python, cpu = random.getstate(), torch.get_rng_state()
    try:
        random.setstate(tuple(rng["python"]) if isinstance(rng["python"], list) else rng["python"])
        torch.set_rng_state(rng["torch"])
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a random state softprompt wrote ({one_line(exc, 120)})") from None
    finally:
        random.setstate(python)
        torch.set_rng_state(cpu)
    return rng


def _run_state(saved: dict[str, Any], best_state: Any) -> RunState:
    """The run state ``trainer_state.json`` holds (written by :func:`_state_json`), with the best adapter
    state that ``trainable_state.pt`` holds."""
    best_loss = saved.get("best_loss")
    return RunState(
        step=saved["global_step"], losses=[float(x) for x in saved.get("losses", [])],
        pending=[float(x) for x in saved.get("pending", [])], eval_loss=saved.get("eval_loss"),
        train_tokens=int(saved.get("train_tokens") or 0), train_seconds=float(saved.get("train_seconds") or 0.0),
        best_step=int(saved.get("best_step") or 0),
        best_loss=float(best_loss) if best_loss is not None else float("inf"),
        evals_without_improvement=int(saved.get("evals_without_improvement") or 0), best_state=best_state,
    )


def continue_from(stream: Iterator, skip: int, rng: Rng) -> None:
    """Put a resumed run's data stream where the checkpoint left it (skip the ``skip`` micro-batches
    the interrupted run consumed; the same seeded order) and, last, the random state."""
    for _ in range(skip):
        next(stream)
    random.setstate(tuple(rng["python"]) if isinstance(rng["python"], list) else rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _clean_temporaries(output_dir: Path) -> None:
    """Remove the ``.checkpoint-N.XXXX`` folders a killed run left behind."""
    for tmp in output_dir.glob(".checkpoint-*"):
        if tmp.is_dir() and outdir.TEMPORARY_CHECKPOINT.fullmatch(tmp.name):
            shutil.rmtree(tmp, ignore_errors=True)


def _trim_log(path: Path, step: int) -> list[dict]:
    """Keep the log rows up to ``step`` (the later ones are logged again) and return them."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            steps = row.get("current_steps", 0) if isinstance(row, dict) else None
            if isinstance(steps, int) and steps <= step:  # a row edited out of shape is dropped like a cut one
                rows.append(row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
