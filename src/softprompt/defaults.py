"""Defaults and reserved names that several layers share, each defined once.

The bottom layer (it imports nothing): the flags (``config.py``), the engine (``SamplingParams``),
the jobs and the server read these.
"""

from __future__ import annotations

MAX_NEW_TOKENS = 128
"""The most tokens generated per answer when the caller names no limit (``--max_new_tokens``,
``SamplingParams``). The server's own default for a request without ``max_tokens`` is
``serve.protocol.DEFAULT_MAX_TOKENS``."""

TEMPERATURE_MAX = 2.0
"""The highest sampling temperature accepted (OpenAI's range is [0, 2]): ``--temperature`` and the server's
``temperature`` field."""

SEED_MIN, SEED_LIMIT = -(2**63), 2**64
"""Seeds run from ``SEED_MIN`` up to, not including, ``SEED_LIMIT``: what ``torch.manual_seed`` and a
``torch.Generator`` take. ``--seed`` (train, chat, predict, eval) and the server's ``seed`` field."""

MAX_MESSAGES = 2048
"""The most messages a chat request may hold, whatever the model's context (checked as the server parses the
body; its own limit, ``serve.protocol.max_messages_for`` or ``--max_messages``, may be lower)."""

MAX_NUM_BATCHED_TOKENS = 512
"""Prompt tokens the server prefills per step (``--max_num_batched_tokens``, the scheduler, the app)."""

BASE = "base"
"""The task name (server) or ``--adapter_name_or_path`` entry (eval) that stands for the base model
alone, with no adapter."""

BASE_ALIASES = (BASE, "none")
"""The spellings of :data:`BASE` accepted everywhere: the server has always said ``base``, ``softprompt
eval`` ``none``."""


def is_base(name: str) -> bool:
    """Whether a task name or adapter entry means the base model alone."""
    return name in BASE_ALIASES
