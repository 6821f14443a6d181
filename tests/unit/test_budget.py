"""Training budgets: the duration and token-count parsers, the argument checks, and the schedule that runs on
the fraction of the budget used (it must equal transformers' own schedule at that fraction)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_scheduler

from softprompt.command_args import CompareArgs, duration_text
from softprompt.config import ArgumentError, TrainArgs, parse_duration, parse_token_count
from softprompt.train.budget import NO_STEP_LIMIT, RESOLUTION, Budget, make_schedule
from softprompt.train.state import RunState


@pytest.mark.parametrize("text, seconds", [("600", 600), ("600s", 600), ("10m", 600), ("1h30m", 5400),
                                           ("1h", 3600), ("1.5h", 5400), ("2m30s", 150), (" 5s ", 5), ("0.5", 0.5),
                                           (90, 90), ("1H30M", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text, "--time_budget") == seconds


@pytest.mark.parametrize("text", ["10x", "m", "", "abc", "-5", "0", "0s", "1h-30m", "10 minutes", "s10"])
def test_bad_durations_name_the_flag_in_one_line(text):
    if text == "":
        assert parse_duration(text, "--time_budget") is None  # empty: no budget (a YAML null)
        return
    with pytest.raises(ArgumentError) as err:
        parse_duration(text, "--time_budget")
    message = str(err.value)
    assert "\n" not in message and message.startswith("--time_budget expects a positive duration")
    assert repr(str(text)) in message


@pytest.mark.parametrize("text, count", [("50000", 50000), ("50k", 50000), ("1.5M", 1_500_000), ("50_000", 50000),
                                         (1200, 1200)])
def test_token_counts(text, count):
    assert parse_token_count(text, "--budget_tokens") == count


@pytest.mark.parametrize("text", ["0", "-3", "many", "5g", "1e4"])
def test_bad_token_counts(text):
    with pytest.raises(ArgumentError, match=r"^--budget_tokens expects a positive number of tokens"):
        parse_token_count(text, "--budget_tokens")


@pytest.mark.parametrize("seconds", [600, 5400, 7.5, 3600, 150])
def test_duration_text_reads_back(seconds):
    assert parse_duration(duration_text(seconds), "x") == seconds
    assert duration_text(600) == "10m" and duration_text(5400) == "1h30m"


def test_argument_checks():
    with pytest.raises(ArgumentError, match="--warmup_steps counts updates"):
        TrainArgs(max_train_seconds=60, warmup_steps=5)
    with pytest.raises(ArgumentError, match="--max_train_tokens must be positive"):
        TrainArgs(max_train_tokens=0)
    with pytest.raises(ArgumentError, match="exclusive"):
        CompareArgs(time_budget=60, budget_tokens=1000)
    assert CompareArgs(time_budget=600).budget() == ("time", 600, "10m")
    assert CompareArgs(budget_tokens=5000).budget() == ("tokens", 5000, "5000 tokens")
    assert CompareArgs().budget() is None


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant_with_warmup"])
def test_schedule_runs_on_the_fraction_of_the_budget(kind):
    """The learning rate at progress p equals transformers' schedule of RESOLUTION steps at step p * RESOLUTION,
    whatever the number of updates; the end of the budget is the end of the schedule."""
    args = TrainArgs(max_train_seconds=100, lr_scheduler_type=kind, warmup_ratio=0.1, learning_rate=0.5)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=args.learning_rate)
    budget = Budget(args)
    scheduler, total = make_schedule(args, optimizer, budget, per_update=4)
    assert total == NO_STEP_LIMIT and budget and not budget.reached()
    reference = get_scheduler(kind, torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5),
                              num_warmup_steps=math.ceil(0.1 * RESOLUTION), num_training_steps=RESOLUTION)
    expected = reference.lr_lambdas[0]
    assert scheduler.get_last_lr()[0] == 0.5 * expected(0)
    budget.state = state = RunState()
    for seconds in (3.0, 9.5, 20.0, 30.0, 37.5):  # uneven updates: a shared machine
        state.add_update(1.0, 10, seconds)
        state.train_seconds += seconds
        optimizer.step()
        scheduler.step()
        fraction = min(1.0, state.train_seconds / 100)
        assert budget.progress() == pytest.approx(fraction)
        assert scheduler.get_last_lr()[0] == pytest.approx(0.5 * expected(round(fraction * RESOLUTION)))
    assert budget.reached() and "time budget of 100 s reached after 5 updates" in budget.stop_line()


def test_tokens_and_max_steps_budget():
    budget = Budget(TrainArgs(max_train_tokens=1000, max_steps=4))
    budget.state = state = RunState()
    state.add_update(1.0, 300, 0.1)
    assert budget.progress() == pytest.approx(0.3) and budget.estimated_total(1) == 3
    state.add_update(1.0, 100, 0.1)
    assert budget.progress() == pytest.approx(0.5)  # 2 of --max_steps 4 is further than 400 of 1000 tokens
    for _ in range(2):
        state.add_update(1.0, 100, 0.1)
    assert budget.reached() and "--max_steps 4 reached before the budget (60% used)" in budget.stop_line()
    assert not Budget(TrainArgs(max_steps=4))  # no budget: the usual per-update schedule
