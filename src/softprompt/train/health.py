"""Training health: the last adapter state whose loss was finite, the best validation loss, and
early stopping on it. The rules are here; what they keep lives in the loop's :class:`RunState`.

States are copies of ``adapter.adapter_state()`` (PEFT's keys, fp32 on the CPU): a soft prompt
is a few hundred KB, so keeping one or two costs nothing next to a step, and it works the same
for every method, since it only goes through the adapter's own state dict.
"""

from __future__ import annotations

import math

from softprompt.config import TrainArgs
from softprompt.train.state import RunState, State

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
    """The rules of a run: call :meth:`finite` before each update, :meth:`evaluated` after each
    validation; both keep their bookkeeping in the :class:`RunState` they are given."""

    def __init__(self, adapter, args: TrainArgs):
        self.adapter, self.args = adapter, args
        self.snapshots = sum(t.numel() * 4 for t in adapter.adapter_state().values()) <= SNAPSHOT_LIMIT
        """Whether the adapter is small enough to copy before every update."""

    def finite(self, state: RunState) -> None:
        """The next update's loss and gradient were finite: the parameters it used (after
        ``state.step`` updates) are good."""
        if self.snapshots:
            state.last_good, state.last_good_updates = copy_state(self.adapter), state.step

    def evaluated(self, state: RunState) -> bool:
        """Record ``state.eval_loss``, measured after ``state.step`` updates; True when training should stop."""
        if state.eval_loss < state.best_loss:
            state.best_loss, state.best_step, state.evals_without_improvement = state.eval_loss, state.step, 0
            if self.args.load_best_model_at_end:
                state.best_state = copy_state(self.adapter)
            return False
        state.evals_without_improvement += 1
        patience = self.args.early_stopping_patience
        return bool(patience) and state.evals_without_improvement >= patience

    def non_finite_message(self, state: RunState, err: NonFiniteError, output_dir: str) -> str:
        """One line: the step, what was kept, and what to try."""
        if state.last_good is not None:
            kept = (f"{output_dir} holds the adapter after {state.last_good_updates} updates "
                    "(the last with a finite loss)")
        elif not self.snapshots:
            kept = f"the adapter is too big to copy every update: the checkpoint-N folders in {output_dir} remain"
        else:
            kept = "no step had a finite loss, so no adapter was written"
        return (f"step {err.step}: the loss or gradient became non-finite (loss={err.loss}, "
                f"grad_norm={err.grad_norm}); training stopped. {kept}; try a lower --learning_rate (now {self.args.learning_rate:g})")
