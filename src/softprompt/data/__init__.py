"""Datasets, chat templates and collation.

The training loop makes one call, :func:`load_and_tokenize`, and batches with
:func:`collate`; inference builds prompts with :func:`encode_prompt` (the same ids training
saw before an answer) and batches them with :func:`left_pad`.
"""

from .collate import collate, left_pad
from .errors import DataError
from .formats import ANSWER_ROLES, PROMPT_ROLES, Conversation, check_turns, to_conversation
from .preprocess import (
    Example,
    infer_seqlen,
    load_and_tokenize,
    load_conversations,
    split_dataset,
    tokenize_dataset,
    truncate_prompt,
)
from .sampler import PrefixGroupedSampler
from .registry import DatasetSpec, Row, dataset_files, dataset_specs, load_rows, read_dataset_info, read_rows
from .templates import (
    BUILTIN_TEMPLATES,
    IGNORE_INDEX,
    ChatTemplate,
    encode_conversation,
    encode_prompt,
    render_prompt,
    resolve_template,
)

__all__ = [
    "ANSWER_ROLES", "BUILTIN_TEMPLATES", "IGNORE_INDEX", "PROMPT_ROLES",
    "ChatTemplate", "Conversation", "DataError", "DatasetSpec", "Example", "PrefixGroupedSampler", "Row",
    "check_turns", "collate", "dataset_files", "dataset_specs", "encode_conversation", "encode_prompt",
    "infer_seqlen", "left_pad", "load_and_tokenize", "load_conversations", "load_rows",
    "read_dataset_info", "read_rows", "render_prompt", "resolve_template", "split_dataset",
    "to_conversation", "tokenize_dataset", "truncate_prompt",
]
