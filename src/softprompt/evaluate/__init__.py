"""Evaluation jobs: metrics, label-word classification, generation and loss scoring, the
``softprompt eval`` runner, and ``softprompt inspect``'s look inside a soft prompt."""

from softprompt.evaluate.run import evaluate

__all__ = ["evaluate"]
