"""What the page says when something fails: the CLI's one line, never a traceback."""

from __future__ import annotations

from softprompt.config import ArgumentError
from softprompt.files import one_line


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's (their message is the CLI's one line), as ``softprompt.cli`` lists them."""
    from softprompt.checkpoint import CheckpointError
    from softprompt.data import DataError
    from softprompt.model import ModelNotFoundError
    from softprompt.train import TrainingError

    return ArgumentError, CheckpointError, DataError, ModelNotFoundError, TrainingError


def error_text(exc: BaseException) -> str:
    """One line for ``exc``: a user error's own message; anything else named by its type."""
    if isinstance(exc, user_errors()):
        return f"error: {one_line(exc, 600)}"
    return f"error: {type(exc).__name__}: {one_line(exc, 600)}"
