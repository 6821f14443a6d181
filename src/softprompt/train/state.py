"""The run state: everything the training loop carries from one update to the next.

The loop owns one :class:`RunState`; :mod:`softprompt.train.resume` saves it into a checkpoint
and restores it from one; :mod:`softprompt.train.health` reads and writes its bookkeeping of
finite steps and validation losses. The run's fixed parts (model, optimizer, loaders, ...) are
not here: they do not change from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

State = dict[str, torch.Tensor]
"""A copy of an adapter's tensors (``adapter.adapter_state()``: PEFT's keys, fp32 on the CPU)."""


@dataclass
class RunState:
    """Where a run stands after ``step`` optimizer updates."""

    step: int = 0
    """Optimizer updates done."""
    losses: list[float] = field(default_factory=list)
    """The loss of every update so far (train_loss is their mean)."""
    pending: list[float] = field(default_factory=list)
    """Losses of the updates since the last log line (logged as their mean)."""
    pending_tokens: int = 0
    """Real tokens of the updates since the last log line (for tokens_per_second); not saved in
    checkpoints: a resumed run counts from its restart."""
    eval_loss: float | None = None
    """The last validation loss."""
    train_tokens: int = 0
    """Real (non-padding) tokens trained on so far."""
    train_seconds: float = 0.0
    """Seconds in updates, fetching their batches included, over the whole run (a resumed run's include the
    checkpoint's): what --max_train_seconds counts."""
    update_seconds: float = 0.0
    """Seconds spent in updates (validation excluded) by this process since it started; not saved."""
    start_time: float = 0.0
    """When this process started training (``time.time()``), for elapsed_time; not saved."""
    last_log_time: float = 0.0
    """When the last log line was written (or training started); not saved."""
    history: list[dict] = field(default_factory=list)
    """The rows of trainer_log.jsonl so far (a resumed run's start with the checkpoint's)."""
    last_good: State | None = None
    """The adapter before the last update whose loss and gradient were finite (None: none yet, or
    an adapter too big to copy every update)."""
    last_good_updates: int = 0
    """How many updates ``last_good`` had received."""
    best_loss: float = math.inf
    """The lowest validation loss so far."""
    best_step: int = 0
    """The step of ``best_loss`` (0: no validation yet)."""
    best_state: State | None = None
    """The adapter at ``best_step``, kept for --load_best_model_at_end."""
    evals_without_improvement: int = 0
    """Validations in a row that did not lower ``best_loss`` (for --early_stopping_patience)."""

    def add_update(self, loss: float, tokens: int, seconds: float) -> None:
        """Count one optimizer update: its loss, its real tokens and the seconds it took."""
        self.step += 1
        self.losses.append(loss)
        self.pending.append(loss)
        self.pending_tokens += tokens
        self.train_tokens += tokens
        self.update_seconds += seconds

    def take_pending(self, now: float) -> tuple[float, float]:
        """The mean loss and the tokens per second since the last log line; starts a new one at ``now``."""
        loss = sum(self.pending) / len(self.pending)
        tokens_per_second = self.pending_tokens / max(now - self.last_log_time, 1e-9)
        self.pending, self.pending_tokens, self.last_log_time = [], 0, now
        return loss, tokens_per_second
