"""Training to a budget (``--max_train_seconds``, ``--max_train_tokens``) instead of a number of updates.

A budgeted run does not know how many updates it will make, so its learning-rate schedule runs on
*progress*, the fraction of the budget used (``seconds in updates / max_train_seconds``, ``real tokens /
max_train_tokens``; the larger one, and ``step / max_steps`` when --max_steps also caps), not on the update
count: the schedule's shape (cosine, linear, warmup_ratio) is transformers' own, sampled at
``progress * RESOLUTION`` of ``RESOLUTION`` virtual steps. The schedule thus ends where the run ends, however
fast or slow the updates turn out (a shared machine, a first slow step), with nothing estimated. A run without a
budget gets transformers' usual per-update schedule.

The counters (``RunState.train_seconds``, ``RunState.train_tokens``) are saved in checkpoints, so a resumed
budgeted run goes on with what is left of its budget (a time budget's remaining updates depend on the speed
of the machine it resumes on, so its result is not bit-for-bit the uninterrupted run's; a token budget's is).
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from softprompt.config import TrainArgs
from softprompt.train.state import RunState

RESOLUTION = 100_000
"""Virtual steps the progress-based schedule is sampled at."""
NO_STEP_LIMIT = 2**62
"""The update count of a budgeted run without --max_steps: the budget stops it first."""


class Budget:
    """The budget of one run (none: both limits unset) and where the run stands in it."""

    def __init__(self, args: TrainArgs):
        self.seconds, self.tokens = args.max_train_seconds, args.max_train_tokens
        self.max_steps = args.max_steps if args.max_steps > 0 else None
        self.state: RunState | None = None
        """The run's state, set when the loop starts (before that, progress is 0)."""

    def __bool__(self) -> bool:
        return self.seconds is not None or self.tokens is not None

    def progress(self) -> float:
        """The fraction of the run done, in [0, 1]: of the budget, or of --max_steps where that is further."""
        steps = self.state.step / self.max_steps if self.state is not None and self.max_steps else 0.0
        return min(1.0, max(self.used(), steps))

    def used(self) -> float:
        """The fraction of the budget (time or tokens, whichever is further) used so far."""
        state = self.state
        if state is None:
            return 0.0
        return max(state.train_seconds / self.seconds if self.seconds else 0.0,
                   state.train_tokens / self.tokens if self.tokens else 0.0)

    def reached(self) -> bool:
        return bool(self) and self.progress() >= 1.0

    def estimated_total(self, step: int) -> int:
        """The updates the run will make in all, as its progress so far suggests (for log lines)."""
        return max(step, round(step / max(self.progress(), 1e-9)))

    def stop_line(self) -> str:
        """What stopped the run, as a log line."""
        state = self.state
        assert state is not None
        if self.seconds and state.train_seconds >= self.seconds:
            what = f"time budget of {self.seconds:g} s reached after {state.step} updates"
        elif self.tokens and state.train_tokens >= self.tokens:
            what = f"token budget of {self.tokens} tokens reached after {state.step} updates"
        else:
            what = f"--max_steps {self.max_steps} reached before the budget ({100 * self.used():.0f}% used)"
        return (f"stopped: {what} ({state.train_seconds:.1f} s in updates, {state.train_tokens} tokens)")

    def results(self) -> dict:
        """What train_results.json records about the budget."""
        return {"max_train_seconds": self.seconds, "max_train_tokens": self.tokens,
                "budget_used": round(min(1.0, self.used()), 4)}


def make_schedule(args: TrainArgs, optimizer, budget: Budget, per_update: int) -> tuple[LambdaLR, int]:
    """The learning-rate scheduler and the run's update count (``per_update``: the updates of one epoch).

    Without a budget: transformers' schedule over ``max_steps`` (or the epochs') updates. With one: the same
    shape over progress (see the module docstring); the count is --max_steps, or :data:`NO_STEP_LIMIT`."""
    if not budget:
        total = args.max_steps if args.max_steps > 0 else max(
            1, math.ceil(args.num_train_epochs * per_update / args.gradient_accumulation_steps))
        warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total)
        return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                             num_training_steps=total), total
    shape = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=math.ceil(args.warmup_ratio * RESOLUTION),
                          num_training_steps=RESOLUTION).lr_lambdas[0]
    scheduler = LambdaLR(optimizer, lambda _update: shape(min(RESOLUTION, round(budget.progress() * RESOLUTION))))
    return scheduler, budget.max_steps or NO_STEP_LIMIT
