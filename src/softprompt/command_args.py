"""The arguments of each command beyond training's: predict, chat, eval, sweep, compare, inspect, serve,
export, webui, and the launcher's ``--nproc_per_node``.

As in :mod:`softprompt.config`: each field's attribute docstring is its ``--help`` text, and
``__post_init__`` validates, raising :class:`~softprompt.config.ArgumentError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from softprompt.config import ArgumentError, parse_duration, parse_token_count
from softprompt.defaults import MAX_MESSAGES, MAX_NUM_BATCHED_TOKENS


@dataclass
class PredictArgs:
    output_dir: str = "output/predict"
    """Where generated_predictions.jsonl is written."""
    per_device_eval_batch_size: int = 8
    """Prompts generated together in one batch."""

    def __post_init__(self) -> None:
        if self.per_device_eval_batch_size < 1:
            raise ArgumentError(f"--per_device_eval_batch_size must be at least 1, got {self.per_device_eval_batch_size}")


@dataclass
class ChatArgs:
    query: str | None = None
    """Answer this one message and exit (default: an interactive chat)."""
    system: str | None = None
    """System message (default: the template's own)."""
    template: str | None = None
    """Chat template: unset uses the tokenizer's own; or 'default', 'alpaca', 'empty', or a .jinja file."""


@dataclass
class TaskArgs:
    task: Literal["classification", "generation", "loss"] = "loss"
    """What to measure: 'classification' (label words scored by log-likelihood: accuracy, macro-F1),
    'generation' (generate, then exact match, ROUGE-L, BLEU-4) or 'loss' (mean loss, perplexity)."""
    label_words: str | None = None
    """Classification labels, comma-separated (default: the distinct answers of the data)."""
    label_score: Literal["sum", "mean"] = "sum"
    """How a label of several tokens is scored: the sum or the mean of its tokens' log-likelihoods."""

    def __post_init__(self) -> None:
        labels = self.labels()
        if self.label_words is not None and (len(set(labels)) < 2 or len(set(labels)) != len(labels)):
            raise ArgumentError(f"--label_words needs at least two different comma-separated words, each once, "
                                f"got {self.label_words!r}")

    def labels(self) -> list[str]:
        """The --label_words as a list (empty when unset)."""
        return [w.strip() for w in (self.label_words or "").split(",") if w.strip()]


@dataclass
class EvalArgs:
    output_dir: str = "output/eval"
    """Where eval_results.json, eval_results.md (and eval_predictions.jsonl) are written."""
    per_device_eval_batch_size: int = 8
    """Examples scored or generated together in one batch."""
    save_predictions: bool = False
    """Also write eval_predictions.jsonl: one row per example and model."""

    def __post_init__(self) -> None:
        if self.per_device_eval_batch_size < 1:
            raise ArgumentError(f"--per_device_eval_batch_size must be at least 1, got {self.per_device_eval_batch_size}")


@dataclass
class SweepArgs:
    num_virtual_tokens: list[int] | None = None
    """Prompt lengths to try, comma-separated (e.g. 5,10,20) or a YAML list: one run per combination of the
    lists given (unset: the training default)."""
    prompt_tuning_init: list[str] | None = None
    """Initialisations to try, comma-separated: random, sample_vocab, text (with prompt_tuning_init_text),
    module:function."""
    learning_rate: list[float] | None = None
    """Learning rates to try, comma-separated."""
    max_new_tokens: int = 64
    """With --task generation: the most tokens generated per validation answer (greedy)."""

    AXES: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "prompt_tuning_init", "learning_rate")
    """The swept arguments: each run takes one value of each list given."""

    def axes(self) -> dict[str, list[Any]]:
        """{swept argument: its values} for the lists given."""
        return {name: getattr(self, name) for name in self.AXES if getattr(self, name) is not None}

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ArgumentError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class CompareArgs:
    methods: str | None = None
    """Methods to train and compare, comma-separated (each a --finetuning_type; default: every registered method)."""
    eval_dataset: str | None = None
    """Dataset in dataset_dir each result is scored on with --task (e.g. sst2_dev with --task classification);
    unset: the validation loss (--val_size) is the only quality figure."""
    eval_max_samples: int | None = 200
    """How many examples of eval_dataset are scored (the first ones; unset: all)."""
    method_learning_rates: str = ""
    """Learning rates for some methods (method=rate, comma-separated) in place of --learning_rate (default: none;
    a method gets --learning_rate if given, else its own recipe's rate, as `softprompt train` does)."""
    time_budget: float | None = field(default=None,
                                      metadata={"parse": lambda text: parse_duration(text, "--time_budget")})
    """Give every method the same training time instead of the same steps (600, 600s, 10m, 1h30m): each trains
    with --max_train_seconds, its schedule on the fraction of the budget used; --max_steps and num_train_epochs are
    not used. (--max_train_seconds is taken as this.)"""
    budget_tokens: int | None = field(default=None,
                                      metadata={"parse": lambda text: parse_token_count(text, "--budget_tokens")})
    """Give every method the same number of real (non-padding) training tokens (50000, 50k, 1.5M): each trains with
    --max_train_tokens. With the same data and batch for all, this equals the same steps. (--max_train_tokens is
    taken as this.)"""

    def budget(self) -> tuple[str, float | int, str] | None:
        """(kind, value, text) of the budget every method gets: ("time", 600.0, "10m"), ("tokens", 50000, "50000
        tokens"); None: the same steps."""
        if self.time_budget is not None:
            return "time", self.time_budget, duration_text(self.time_budget)
        if self.budget_tokens is not None:
            return "tokens", self.budget_tokens, f"{self.budget_tokens} tokens"
        return None

    def method_list(self) -> list[str]:
        """The --methods named (empty when unset: the caller takes every registered method)."""
        return [m.strip() for m in (self.methods or "").split(",") if m.strip()]

    def learning_rates(self) -> dict[str, float]:
        out = {}
        for part in filter(None, (p.strip() for p in self.method_learning_rates.split(","))):
            method, _, rate = part.partition("=")
            try:
                out[method.strip()] = float(rate)
            except ValueError:
                raise ArgumentError(f"--method_learning_rates expects method=rate pairs, got {part!r}") from None
        return out

    def __post_init__(self) -> None:
        methods = self.method_list()  # the names are checked against the method registry by compare
        if self.methods is not None and (not methods or len(set(methods)) != len(methods)):
            raise ArgumentError(f"--methods needs one or more different methods, got {self.methods!r}")
        if any(rate <= 0 for rate in self.learning_rates().values()):
            raise ArgumentError("--method_learning_rates: every rate must be positive")
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            raise ArgumentError(f"--eval_max_samples must be at least 1, got {self.eval_max_samples}")
        if self.time_budget is not None and self.budget_tokens is not None:
            raise ArgumentError("--time_budget and --budget_tokens are exclusive: compare at equal time or at equal "
                                "tokens, pick one")


def duration_text(seconds: float) -> str:
    """600 -> '10m', 5400 -> '1h30m', 7.5 -> '7.5s': the way --time_budget is written."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours:.0f}h" if hours else "", f"{minutes:.0f}m" if minutes else "", f"{secs:g}s" if secs else ""]
    return "".join(parts) or "0s"


@dataclass
class InspectArgs:
    top_k: int = 5
    """Nearest vocabulary tokens shown per virtual token."""
    json: bool = False
    """Print one JSON object instead of tables."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ArgumentError(f"--top_k must be at least 1, got {self.top_k}")


@dataclass
class ServeArgs:
    prompts_dir: str | None = None
    """Folder whose subfolders are adapters; each is a task named after its folder (plus 'base')."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' on every endpoint but /health."""
    max_num_seqs: int | None = None
    """Requests running at once (tasks mixed; each joins and leaves the batch at any step); the KV cache holds
    this many slots (default: --max_batch_size)."""
    max_model_len: int | None = None
    """Tokens of one slot of the KV cache: soft prompt + prompt + max_tokens of a request must fit (default: the
    model's context, at most 1024; never over the context). KV memory = max_num_seqs x max_model_len x the model's K/V bytes per token."""
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    """Prompt tokens prefilled per step, the chunks of several requests in one forward (vLLM's name): larger
    runs a burst's prompts in fewer, denser forwards; smaller lets running requests decode sooner."""
    max_batch_size: int = 8
    """The former name of --max_num_seqs (used when that is not given)."""
    batch_window_ms: float = 10.0
    """Ignored, with a warning, since continuous batching (requests join at the next step); kept so old command
    lines still parse."""
    compile: bool = False
    """torch.compile the decoder's steps (needs a CUDA GPU)."""
    max_queue: int = 64
    """Requests that may wait; beyond it the server answers 503 at once."""
    max_prefix_cache_mb: float = 256.0
    """Memory for cached prefix K/V of tasks (least recently used evicted first)."""
    template: str | None = None
    """Chat template: unset uses the tokenizer's own (as in training)."""
    max_messages: int | None = None
    """Messages a chat request may hold, at most 2048 (default: the model's context length in tokens, at most 2048)."""

    def __post_init__(self) -> None:
        if self.max_messages is not None and not 1 <= self.max_messages <= MAX_MESSAGES:
            raise ArgumentError(f"--max_messages must be in 1..{MAX_MESSAGES}, got {self.max_messages}")
        if not 0 < self.port < 65536:
            raise ArgumentError(f"--port must be in 1..65535, got {self.port}")
        if self.max_num_seqs is None:
            self.max_num_seqs = self.max_batch_size
        if not 1 <= self.max_num_batched_tokens <= 65536:
            raise ArgumentError(f"--max_num_batched_tokens must be in 1..65536, got {self.max_num_batched_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ArgumentError(f"--max_model_len must be at least 2 tokens, got {self.max_model_len}")
        if self.compile and not _cuda():
            raise ArgumentError("--compile needs a CUDA GPU (none is visible); leave it off on CPU")
        for name in ("max_batch_size", "max_queue", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.api_key is not None:  # never echo the key, not even a character of it
            if not self.api_key.strip() or self.api_key != self.api_key.strip():
                raise ArgumentError("--api_key must be non-empty, without surrounding spaces")
            if not all(" " <= c <= "~" for c in self.api_key):
                raise ArgumentError("--api_key must be printable ASCII, what HTTP clients send in a header: "
                                    "it holds a non-ASCII or control character")
        if self.prompts_dir is not None and not Path(self.prompts_dir).is_dir():
            raise ArgumentError(f"--prompts_dir {self.prompts_dir} is not a folder")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class ExportArgs:
    adapter_name_or_path: str | None = None
    """Folder of the trained adapter (PEFT format): prompt_tuning or p_tuning."""
    format: Literal["embeddings", "vllm"] = "embeddings"
    """What to write: 'embeddings', the prompt's (num_virtual_tokens, hidden_size) tensor as one file; 'vllm', a
    folder for `vllm serve --enable-prompt-embeds`: prompt_embeds.pt in the base's dtype, and softprompt_vllm.json
    (base model, length, dtype, the serve command and the client recipe)."""
    output: str | None = None
    """Where to write: for 'embeddings' a .safetensors (one tensor 'prompt_embeds') or .pt file (the tensor, for
    torch.load); for 'vllm' a folder (created if absent)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Precision of the written tensor; 'auto': fp32 for 'embeddings', the base model's own dtype for 'vllm'."""
    model_name_or_path: str | None = None
    """For 'vllm': the base model the prompt was trained on (default: the adapter's base_model_name_or_path)."""

    def __post_init__(self) -> None:
        suffix = Path(self.output).suffix if self.output is not None else ""
        if self.format == "embeddings" and self.output is not None and suffix not in (".safetensors", ".pt"):
            raise ArgumentError(f"--output {self.output}: name a .safetensors or a .pt file")
        if self.format == "vllm" and suffix in (".safetensors", ".pt", ".json"):
            raise ArgumentError(f"--output {self.output}: --format vllm writes a folder (prompt_embeds.pt and "
                                "softprompt_vllm.json); name a folder")


@dataclass
class WebuiArgs:
    host: str = "127.0.0.1"
    """Address the page listens on (0.0.0.0: every interface; the page starts jobs, so keep it private)."""
    port: int = 7860
    """Port the page listens on."""
    dataset_dir: str = "data"
    """The dataset_dir the forms start with (its dataset_info.json fills the dataset pickers)."""
    language: Literal["en", "zh"] = "en"
    """The page's language at first: en (English) or zh (Chinese); the page can switch it."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ArgumentError(f"--port must be in 1..65535, got {self.port}")


def _process_count(text: Any) -> int:
    """``--nproc_per_node`` text -> a positive int; a word or a sign is refused in the same words as 0."""
    if not str(text).isdigit() or int(text) < 1:
        raise ArgumentError(f"--nproc_per_node must be a positive number of processes, got {str(text)!r}")
    return int(text)


@dataclass
class LaunchArgs:
    nproc_per_node: int = field(default=1, metadata={"parse": _process_count})
    """Train in N processes on this machine (data parallel, as torchrun does); each gets the other arguments."""

    def __post_init__(self) -> None:
        _process_count(self.nproc_per_node)
