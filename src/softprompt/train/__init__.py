"""Training: the loop (on Accelerate) and the loss plot."""

from softprompt.train.loop import TrainingError, TrainResult, train

__all__ = ["train", "TrainResult", "TrainingError"]
