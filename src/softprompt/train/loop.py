"""The training loop: one readable file, on Accelerate.

Per optimizer update: take ``gradient_accumulation_steps`` micro-batches, count their labelled
tokens, and back-propagate each micro-batch's summed loss divided by that count, so the update
equals one big batch (batch 8 x accumulation 1 == batch 1 x accumulation 8). Each micro-batch
computes the soft prompt's prefix K/V once (batch 1) and shares it with every row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from softprompt import methods, outdir
from softprompt.config import ArgumentError, DataArgs, MethodArgs, ModelArgs, TrainArgs, as_dict
from softprompt.data import (IGNORE_INDEX, PrefixGroupedSampler, collate, dataset_files, load_and_tokenize,
                             load_conversations)
from softprompt.files import atomic_write_text
from softprompt.engine.forward import AdaptedLM, batch_loss, enable_gradient_checkpointing, prefix_of
from softprompt.model import LoadedModel, load_model, model_folder_as_base
from softprompt.train.budget import Budget, make_schedule
from softprompt.train.health import Health, NonFiniteError, check_finite
from softprompt.train.plot import plot_loss
from softprompt.train.resume import Rng, continue_from, restore, resume_folder, save_checkpoint
from softprompt.train.shard import release_gathered, shard_base, sync_replicated_grads
from softprompt.train.state import RunState, State

log = logging.getLogger("softprompt")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became non-finite)."""


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    train_loss: float
    eval_loss: float | None
    runtime_s: float
    history: list[dict] = field(default_factory=list)


def check_output_dir(args: TrainArgs, model_args: ModelArgs, data_args: DataArgs,
                     writes: Callable[[str], bool] = outdir.run_writes) -> None:
    """--output_dir can be written and may be used by this run (:func:`softprompt.outdir.check_output_dir`:
    none of the run's inputs, not a non-empty current directory, not empty only with --overwrite_output_dir or
    --resume_from_checkpoint, no file softprompt did not write under a name in ``writes``); before any loading."""
    inputs = outdir.run_inputs(model_args, data_args, dataset_files(data_args.dataset, data_args.dataset_dir))
    outdir.check_output_dir(args.output_dir, args.overwrite_output_dir, bool(args.resume_from_checkpoint), inputs,
                            writes)


def clear_output_dir(out: Path) -> None:
    """--overwrite_output_dir: remove what softprompt wrote in ``out``; one log line names what stays."""
    kept = outdir.clear(out)
    if kept:
        log.info("--overwrite_output_dir: kept %d file(s) in %s that softprompt did not write: %s", len(kept), out,
                 ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else ""))


def fresh_output_dir(args: TrainArgs, model_args: ModelArgs, data_args: DataArgs, names: Collection[str],
                     *subfolders: str) -> Path:
    """``args.output_dir`` (checked by :func:`check_output_dir`; ``names``: what the job writes in it) without what
    softprompt wrote there, with ``subfolders`` created and listed in it: the folder of a job that runs several
    trainings (compare, sweep)."""
    check_output_dir(args, model_args, data_args, lambda name: name in names or name in subfolders)
    out = Path(args.output_dir)
    clear_output_dir(out)
    outdir.claim(out, *subfolders)
    for sub in subfolders:
        (out / sub).mkdir(exist_ok=True)
    return out


def choose_precision(args: TrainArgs, device: torch.device) -> str:
    """Accelerate's mixed_precision: what the flags ask for, where the device supports it."""
    if device.type == "cuda":
        if args.bf16 and torch.cuda.is_bf16_supported():
            return "bf16"
        if args.fp16 or args.bf16:
            return "fp16"
        return "no"
    if args.fp16:
        log.warning("--fp16 needs a GPU; on the %s training runs in fp32 instead", device.type)
    if args.bf16:
        log.info("--bf16 on the %s: bf16 autocast, the soft prompt stays fp32", device.type)
        return "bf16"
    return "no"


def _loaders(train_set, val_set, args: TrainArgs, pad_id: int) -> tuple[DataLoader, DataLoader | None]:
    g = torch.Generator().manual_seed(args.seed)
    fn = lambda rows: collate(rows, pad_id)  # noqa: E731
    B = args.per_device_train_batch_size
    if args.group_by_prefix:  # batches of rows with the same leading tokens (runs them once: --shared_prefix)
        sampler = PrefixGroupedSampler([ex["input_ids"] for ex in train_set], B, args.seed)
        train = DataLoader(train_set, batch_size=B, sampler=sampler, collate_fn=fn)
    else:
        train = DataLoader(train_set, batch_size=B, shuffle=True, generator=g, collate_fn=fn)
    # Validation order does not change the mean loss: sort by length so batches carry little padding.
    val_sorted = sorted(val_set, key=lambda ex: len(ex["input_ids"]))
    val = DataLoader(val_sorted, batch_size=args.per_device_eval_batch_size, collate_fn=fn) if val_set else None
    return train, val


def _micro_batches(loader: DataLoader):
    """Batches forever, epoch after epoch: yields (epoch_float, batch)."""
    epoch = 0
    while True:
        for i, batch in enumerate(loader):
            yield epoch + (i + 1) / len(loader), batch
        epoch += 1


@torch.no_grad()
def evaluate_loss(model: AdaptedLM, loader: DataLoader, accelerator: Accelerator) -> float:
    """Mean loss per labelled token; the prefix is computed once for the whole pass."""
    model.eval()
    inner = accelerator.unwrap_model(model)
    prefix = prefix_of(inner.base, inner.adapter)
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss_sum, n = batch_loss(inner.base, batch["input_ids"], batch["attention_mask"], batch["labels"], prefix)
        total, count = total + loss_sum.float(), count + n
    model.train()
    stats = accelerator.reduce(torch.stack([total, torch.tensor(float(count), device=total.device)]), "sum")
    return float(stats[0] / stats[1].clamp(min=1))


class _Update(NamedTuple):
    """What one optimizer update reports."""

    loss: float
    """Mean loss per labelled token, over every process's micro-batches."""
    grad_norm: float
    """The gradient's norm before clipping."""
    lr: float
    """The learning rate the update used."""
    tokens: int
    """Real (non-padding) tokens, over every process."""
    seconds: float
    """How long the update took."""
    epoch: float
    """Where the data stream is after the update, in epochs."""


def _update(run: _Run, state: RunState, window: list[tuple[float, dict]]) -> _Update:
    """The optimizer update after ``state.step`` ones, over a window of micro-batches ``(epoch, batch)``.

    Raises NonFiniteError, before touching the parameters, when the loss or gradient is not finite.
    """
    start = time.time()
    model, optimizer, scheduler, accelerator, args = run.model, run.optimizer, run.scheduler, run.accelerator, run.args
    n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for _, b in window)
    n_global = float(accelerator.reduce(torch.tensor(float(n_local), device=accelerator.device), "sum"))
    scale = accelerator.num_processes / max(n_global, 1.0)  # DDP averages over processes
    loss_total, tokens = 0.0, 0
    for i, (_, batch) in enumerate(window):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        sync = accelerator.no_sync(model) if i < len(window) - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            loss_sum, _ = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
            accelerator.backward(loss_sum * scale)
        loss_total += float(loss_sum.detach())
        tokens += int(batch["attention_mask"].sum())
    sync_replicated_grads(model, accelerator.num_processes)  # --fsdp/--deepspeed: the adapter's gradients, averaged
    # Log what the update optimized: the loss over every process's tokens, and all their real tokens.
    totals = accelerator.reduce(torch.tensor([loss_total, float(tokens)], device=accelerator.device), "sum")
    loss, tokens = float(totals[0]) / max(n_global, 1.0), int(totals[1])
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    check_finite(state.step + 1, loss, float(grad_norm))
    run.health.finite(state)
    if args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, args.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()  # the scheduler steps in _run, once the update is counted (a budget's progress includes it)
    optimizer.zero_grad(set_to_none=True)
    release_gathered(model)  # --deepspeed: the weights the backward gathered
    return _Update(loss, float(grad_norm), lr, tokens, time.time() - start, window[-1][0])


class _Outputs:
    """What the run writes under output_dir: log lines, checkpoints, the final adapter, the plot."""

    def __init__(self, args: TrainArgs, lm: LoadedModel, adapter, accelerator: Accelerator, all_args: dict):
        self.dir, self.args, self.lm, self.adapter = Path(args.output_dir), args, lm, adapter
        self.main = accelerator.is_main_process
        self.sizes: dict[str, int] = {}
        if self.main:
            if not args.resume_from_checkpoint:
                clear_output_dir(self.dir)  # --overwrite_output_dir was checked before anything was loaded
            elif not (self.dir / outdir.MANIFEST).is_file():
                outdir.adopt(self.dir, outdir.run_writes)  # a run older than manifests: resuming vouches for it
            outdir.claim(self.dir, "training_args.yaml", "trainer_log.jsonl")  # resuming keeps output_dir and its log
            atomic_write_text(self.dir / "training_args.yaml", yaml.safe_dump(all_args, sort_keys=False))
            self.log_file = open(self.dir / "trainer_log.jsonl", "a", encoding="utf-8")

    def record(self, state: RunState, row: dict) -> None:
        """Add ``row`` to the run's history and to trainer_log.jsonl."""
        state.history.append(row)
        if self.main:
            self.log_file.write(json.dumps(row) + "\n")
            self.log_file.flush()

    def save_adapter(self, folder: Path | None = None, state: State | None = None) -> None:
        """Write the adapter (or ``state``, a copy of its tensors) to ``folder`` or to output_dir.

        A checkpoint's ``folder`` is a temporary one that :func:`resume.save_checkpoint` renames into place."""
        if not self.main:
            return

        def write(target: Path) -> None:
            methods.save_adapter(self.adapter, target, self.lm.name, self.lm.model, state)

        if folder is None:
            outdir.write_into(self.dir, write)  # each file listed in the manifest before it is moved into place
        else:
            write(folder)

    def finish(self, result: dict, history: list[dict]) -> None:
        if not self.main:
            return
        self.log_file.close()
        outdir.claim(self.dir, "train_results.json", *(["training_loss.png"] if self.args.plot_loss else []))
        atomic_write_text(self.dir / "train_results.json", json.dumps(result, indent=2) + "\n")
        if self.args.plot_loss:
            plot_loss(history, self.dir / "training_loss.png")


@dataclass
class _Run:
    """The run's fixed parts, built once by :func:`train`; what changes from update to update is in
    the :class:`RunState`."""

    model: torch.nn.Module
    """The AdaptedLM, as Accelerate prepared it."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    """The learning-rate scheduler (``transformers.get_scheduler``)."""
    train_loader: DataLoader
    val_loader: DataLoader | None
    accelerator: Accelerator
    args: TrainArgs
    total: int
    """Optimizer updates the run makes in all."""
    outputs: _Outputs
    health: Health
    budget: Budget
    """--max_train_seconds / --max_train_tokens (falsy: none): what stops the run and drives its schedule."""
    resume_rng: Rng | None = None
    """The checkpoint's random state, put back once the data stream is where the checkpoint left it
    (None: a fresh run)."""


def train(model_args: ModelArgs, data_args: DataArgs, method_args: MethodArgs, args: TrainArgs) -> TrainResult:
    """Train an adapter as the arguments say and write it to ``args.output_dir`` in PEFT's format."""
    method_args = methods.resolve(method_args)  # the method exists and takes these arguments
    args, recipe = methods.with_recipe(methods.get(method_args.finetuning_type), args)  # unset lr, schedule
    log.info(recipe)
    check_output_dir(args, model_args, data_args)
    checkpoint = resume_folder(args)  # --resume_from_checkpoint, checked before anything is loaded
    model_args = model_folder_as_base(model_args)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # cpu=True: under torchrun / `accelerate launch --multi_gpu` on a machine without CUDA, Accelerate
    # only sets up its gloo process group (MULTI_CPU) when told it runs on the CPU.
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=choose_precision(args, device))
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)  # rank 0 reports; the others only warn
    check_quantized(model_args, method_args, args)
    lm = load_model(model_args.model_name_or_path, model_args.cache_dir, quantization_bit=model_args.quantization_bit)
    data_args.require_dataset()
    train_set, val_set = load_and_tokenize(data_args, lm.tokenizer, args.seed)
    if (args.early_stopping_patience or args.load_best_model_at_end) and not val_set:
        flag = "--early_stopping_patience" if args.early_stopping_patience else "--load_best_model_at_end"
        raise ArgumentError(f"{flag} needs a validation split: set --val_size")
    data = methods.TaskData(lambda: load_conversations(data_args, args.seed))  # read again only if the init asks
    adapter = _initial_adapter(lm, model_args, method_args, args.seed, data)
    model = AdaptedLM(lm.model, adapter, shared_prefix=args.shared_prefix)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(lm.model)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the adapter's, or the base's own (lora, ...)
    n_params, n_all = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    log.info("%s: %d trainable parameters (%.4f%% of %d); %d train / %d validation examples",
             method_args.finetuning_type, n_params, 100 * n_params / n_all, n_all, len(train_set), len(val_set))
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, weight_decay=args.weight_decay)
    train_loader, val_loader = _loaders(train_set, val_set, args, lm.tokenizer.pad_token_id)
    budget = Budget(args)  # --max_train_seconds / --max_train_tokens: the schedule runs on its progress
    scheduler, total = make_schedule(args, optimizer, budget, len(train_loader))
    if shard_base(model, accelerator, args):  # the base sharded here, the adapter replicated: no DDP wrapper
        optimizer, train_loader = accelerator.prepare(optimizer, train_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    accelerator.wait_for_everyone()  # every process checked output_dir before rank 0 replaces it
    state, rng = RunState(), None
    if checkpoint is not None:
        state, rng = restore(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler, args,
                             accelerator.is_main_process, total)
    outputs = _Outputs(args, lm, adapter, accelerator, as_dict(model_args, data_args, method_args, args))
    outputs.sizes = {"trainable_params": n_params, "all_params": n_all}
    run = _Run(model, optimizer, scheduler, train_loader, val_loader, accelerator, args, total, outputs,
               Health(adapter, args), budget, rng)
    try:
        return _run(run, state)
    except NonFiniteError as err:
        raise _stopped(run, state, err) from None


def check_quantized(model_args: ModelArgs, method_args: MethodArgs, args: TrainArgs) -> None:
    """``--quantization_bit`` keeps the base frozen in 8 or 4 bits: a method that trains the base's own weights
    (full, freeze) and the sharding of ``--fsdp`` / ``--deepspeed`` are refused in one line."""
    bits = model_args.quantization_bit
    if bits is None:
        return
    if methods.get(method_args.finetuning_type).peft_type is None:
        trainable = ", ".join(s.name for s in methods.REGISTRY.values() if s.peft_type is not None)
        raise ArgumentError(f"--finetuning_type {method_args.finetuning_type} trains the base's own weights, which "
                            f"--quantization_bit {bits} stores in {bits} bits: use {trainable} (lora: QLoRA)")
    if args.fsdp or args.deepspeed:
        flag = "--fsdp" if args.fsdp else "--deepspeed"
        raise ArgumentError(f"{flag} does not shard a --quantization_bit base: drop one of the two "
                            "(a quantized base takes 1/4 to 1/8 of the memory: it may fit one device)")


def _initial_adapter(lm: LoadedModel, model_args: ModelArgs, method_args: MethodArgs, seed: int,
                     data: methods.TaskData | None = None):
    """A new adapter (``data``: the training rows, for a method that reads them), or the one in
    --adapter_name_or_path to continue training it."""
    spec = methods.get(method_args.finetuning_type)
    if not model_args.adapter_name_or_path:
        return spec.create(lm.model, lm.tokenizer, method_args, torch.Generator().manual_seed(seed), data)
    files = methods.read_adapter(model_args.adapter_name_or_path)
    if files.spec is not spec:
        raise ArgumentError(f"--adapter_name_or_path {model_args.adapter_name_or_path} holds a {files.peft_type} "
                            f"adapter; --finetuning_type {method_args.finetuning_type} cannot continue it")
    adapter, _ = files.module(lm.model, lm.name, trainable=True)
    if spec.carry_on is not None:
        spec.carry_on(adapter, method_args, torch.Generator().manual_seed(seed))
    log.info("continuing training of %s (%s)", model_args.adapter_name_or_path, files.peft_type)
    return adapter


def _validate(run: _Run, state: RunState, epoch: float, bar) -> bool:
    """The validation loss after ``state.step`` updates, logged; whether early stopping says stop."""
    state.eval_loss = evaluate_loss(run.model, run.val_loader, run.accelerator)
    total = _total_and_done(run, state)[0]
    run.outputs.record(state, {"current_steps": state.step, "total_steps": total,
                               "eval_loss": round(state.eval_loss, 4), "epoch": round(epoch, 3)})
    bar.write(f"step {state.step}/{total}  eval_loss {state.eval_loss:.4f}")
    stop = run.health.evaluated(state)
    if stop:
        bar.write(f"early stopping at step {state.step}: no lower validation loss in "
                  f"{run.args.early_stopping_patience} validations "
                  f"(best {state.best_loss:.4f} at step {state.best_step})")
    return stop


def _total_and_done(run: _Run, state: RunState) -> tuple[int, float]:
    """The run's updates in all (a budgeted run's: as its progress so far suggests) and the fraction done."""
    if run.budget:
        return run.budget.estimated_total(state.step), run.budget.progress()
    return run.total, state.step / run.total


def _log_update(run: _Run, state: RunState, update: _Update, bar) -> None:
    """A log line (trainer_log.jsonl and the console) for the updates since the last one."""
    now = time.time()
    loss, tokens_per_second = state.take_pending(now)
    total, done = _total_and_done(run, state)
    run.outputs.record(state, {
        "current_steps": state.step, "total_steps": total, "loss": round(loss, 4),
        "learning_rate": update.lr, "grad_norm": round(update.grad_norm, 4),
        "epoch": round(update.epoch, 3), "tokens_per_second": round(tokens_per_second, 1),
        "percentage": round(100 * done, 2), "elapsed_time": round(now - state.start_time, 1),
        **({"train_seconds": round(state.train_seconds, 2), "train_tokens": state.train_tokens} if run.budget else {}),
    })
    bar.write(f"step {state.step}/{total}  loss {loss:.4f}  lr {update.lr:.2e}"
              f"  grad_norm {update.grad_norm:.4f}  {tokens_per_second:.0f} tokens/s")


def _run(run: _Run, state: RunState) -> TrainResult:
    """The updates from ``state.step`` (0, or a checkpoint's) to ``run.total``; then the adapter and results."""
    state.start_time = state.last_log_time = time.time()
    stream = _micro_batches(run.train_loader)
    run.model.train()
    args, total, main = run.args, run.total, run.accelerator.is_main_process
    if run.resume_rng is not None:  # the data order and random state where the checkpoint left them
        continue_from(stream, state.step * args.gradient_accumulation_steps, run.resume_rng)
    run.budget.state = state
    bar = tqdm(total=None if run.budget else total, initial=state.step, desc="train", unit="step", disable=not main)
    if not main:
        bar.write = lambda *_, **__: None  # tqdm.write prints even when the bar is disabled; rank 0 reports
    last = state.step >= total or run.budget.reached()
    while not last:
        started = time.time()
        update = _update(run, state, [next(stream) for _ in range(args.gradient_accumulation_steps)])
        state.add_update(update.loss, update.tokens, update.seconds)
        state.train_seconds += _agreed_seconds(run, time.time() - started)
        run.scheduler.step()
        last = state.step >= total or run.budget.reached()
        bar.update(1)
        bar.set_postfix(loss=f"{update.loss:.4f}")
        if state.step % args.logging_steps == 0 or last:
            _log_update(run, state, update, bar)
        validate = (args.eval_steps and state.step % args.eval_steps == 0) or last
        if run.val_loader is not None and validate and _validate(run, state, update.epoch, bar):
            break
        if args.save_steps and state.step % args.save_steps == 0 and not last:
            save_checkpoint(run.outputs, state, run.accelerator.unwrap_model(run.model), run.optimizer,
                            run.scheduler, args)
    bar.close()
    if run.budget and last:
        log.info("%s", run.budget.stop_line())
    return _finish(run, state)


def _agreed_seconds(run: _Run, seconds: float) -> float:
    """With a budget and several processes, the slowest one's ``seconds``: every process stops at the same update."""
    accelerator = run.accelerator
    if not run.budget or accelerator.num_processes == 1:
        return seconds
    return float(accelerator.gather(torch.tensor([seconds], device=accelerator.device)).max())


def _finish(run: _Run, state: RunState) -> TrainResult:
    """Write the final (or, with --load_best_model_at_end, the best) adapter and train_results.json."""
    runtime, outputs = time.time() - state.start_time, run.outputs
    train_loss = sum(state.losses) / max(len(state.losses), 1)
    eval_loss = state.eval_loss
    result = {"global_step": state.step, "train_loss": round(train_loss, 4),
              "train_runtime": round(runtime, 2), "eval_loss": None if eval_loss is None else round(eval_loss, 4),
              **outputs.sizes, "train_tokens": state.train_tokens, "train_seconds": round(state.train_seconds, 2),
              "train_tokens_per_second": round(state.train_tokens / max(state.update_seconds, 1e-9), 1)}
    if torch.cuda.is_available():
        result["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
    if run.budget:
        result.update(run.budget.results())
    if state.best_step:
        result.update(best_step=state.best_step, best_eval_loss=round(state.best_loss, 4))
    if run.args.load_best_model_at_end and state.best_state is not None:
        log.info("--load_best_model_at_end: writing the adapter of step %d (validation loss %.4f)",
                 state.best_step, state.best_loss)
        outputs.save_adapter(state=state.best_state)
        eval_loss = state.best_loss
    else:
        outputs.save_adapter()
    outputs.finish(result, state.history)
    return TrainResult(outputs.dir, state.step, train_loss, eval_loss, runtime, state.history)


def _stopped(run: _Run, state: RunState, err: NonFiniteError) -> TrainingError:
    """After a non-finite loss: keep the last good adapter and write train_results.json; the one-line error."""
    outputs = run.outputs
    if state.last_good is not None:
        outputs.save_adapter(state=state.last_good)
    outputs.finish({"global_step": err.step, "stopped": "non-finite loss or gradient",
                    "last_good_updates": state.last_good_updates if state.last_good is not None else None},
                   state.history)
    return TrainingError(run.health.non_finite_message(state, err, str(outputs.dir)))
