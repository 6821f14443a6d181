"""Training health: the last adapter state whose loss was finite, the best validation loss, and
early stopping on it.

States are copies of ``adapter.adapter_state()`` (PEFT's keys, fp32 on the CPU): a soft prompt
is a few hundred KB, so keeping one or two costs nothing next to a step, and it works the same
for every method, since it only goes through the adapter's own state dict.
"""

from __future__ import annotations

import math

import torch

from softprompt.config import TrainArgs

State = dict[str, torch.Tensor]
SNAPSHOT_LIMIT = 256 * 2**20
"""Adapters bigger than this (bytes; full fine-tuning) are not copied every update: after a
non-finite loss, their last ``checkpoint-N`` folder is what remains."""


class NonFiniteError(RuntimeError):
    """The loss or the gradient of an update was NaN or infinite."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"step {step}: non-finite loss {loss} / grad norm {grad_norm}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def check_finite(step: int, loss: float, grad_norm: float) -> None:
    """Raise :class:`NonFiniteError` unless both numbers are finite."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteError(step, loss, grad_norm)


def copy_state(adapter) -> State:
    return {k: v.detach().float().cpu().clone() for k, v in adapter.adapter_state().items()}


class Health:
    """Follows a run: call :meth:`finite` before each update, :meth:`evaluated` after each validation."""

    def __init__(self, adapter, args: TrainArgs):
        self.adapter, self.args = adapter, args
        self.last_good: State | None = None
        self.last_good_updates = 0
        """How many updates the last good state had received."""
        self.best_loss, self.best_step, self.best_state = math.inf, 0, None
        self.evals_without_improvement = 0
        self.snapshots = sum(t.numel() * 4 for t in adapter.adapter_state().values()) <= SNAPSHOT_LIMIT

    def finite(self, step: int) -> None:
        """Step ``step``'s loss and gradient were finite: the parameters it used are good."""
        if self.snapshots:
            self.last_good, self.last_good_updates = copy_state(self.adapter), step - 1

    def evaluated(self, step: int, eval_loss: float) -> bool:
        """Record a validation loss measured after ``step`` updates; True when training should stop."""
        if eval_loss < self.best_loss:
            self.best_loss, self.best_step, self.evals_without_improvement = eval_loss, step, 0
            if self.args.load_best_model_at_end:
                self.best_state = copy_state(self.adapter)
            return False
        self.evals_without_improvement += 1
        patience = self.args.early_stopping_patience
        return bool(patience) and self.evals_without_improvement >= patience

    def non_finite_message(self, err: NonFiniteError, output_dir: str) -> str:
        """One line: the step, what was kept, and what to try."""
        if self.last_good is not None:
            kept = f"{output_dir} holds the adapter after {self.last_good_updates} updates (the last with a finite loss)"
        elif not self.snapshots:
            kept = f"the adapter is too big to copy every update: the checkpoint-N folders in {output_dir} remain"
        else:
            kept = "no step had a finite loss, so no adapter was written"
        return (f"step {err.step}: the loss or gradient became non-finite (loss={err.loss}, "
                f"grad_norm={err.grad_norm}); training stopped. {kept}; try a lower --learning_rate (now {self.args.learning_rate:g})")
