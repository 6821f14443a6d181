"""The method registry: one :class:`MethodSpec` per ``--finetuning_type``, registered by the method's own file.

Like PEFT's map from a ``peft_type`` to its tuner, this is the one place that knows the methods;
every list of them elsewhere (the ``--finetuning_type`` choices, which arguments a method reads,
which adapters the server batches or ``export`` writes, which checkpoint a ``peft_type`` names)
is derived from it. A method file ends with ``SPEC = register(MethodSpec(...))``; a file dropped
into ``softprompt/methods/`` is registered when the package is imported, and a spec registered
from anywhere else (a plugin, a test) works the same.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from softprompt.checkpoint import CheckpointError
from softprompt.config import ArgumentError, MethodArgs, TrainArgs
from softprompt.data import Conversation
from softprompt.model import check_supported, context_length

log = logging.getLogger("softprompt")

Kind = Literal["prompt", "prefix", "weights"]
SPEC_ATTR = "method"
"""The attribute of a created or loaded module that holds its :class:`MethodSpec`."""


@dataclass(frozen=True)
class ConfigField:
    """What one adapter_config.json field may hold: JSON types, and bounds for a number."""

    types: tuple[type, ...]
    """Accepted Python types of the parsed JSON value (``type(None)``: null; ``int`` does not accept a boolean)."""
    low: float | None = None
    """Smallest number allowed."""
    high: float | None = None
    """Largest number allowed."""
    required: bool = False
    """The field must be present."""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit (None: it does)."""
        if not any(type(value) is t or (t is float and type(value) is int) for t in self.types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in self.types)
            return f"must be {names}, got {type(value).__name__}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and value < self.low:
                return f"must be at least {self.low}, got {value}"
            if self.high is not None and value > self.high:
                return f"must be at most {self.high}, got {value}"
        return None


COUNT = ConfigField((int,), 1, 2**31 - 1, required=True)
"""A positive integer that must be there (a length, a number of layers)."""
OPTIONAL_COUNT = ConfigField((int, type(None)), 1, 2**31 - 1)
"""A positive integer, null or absent."""


@dataclass(frozen=True)
class Recipe:
    """A method's training defaults: what ``--learning_rate`` and ``--lr_scheduler_type`` are when not given
    (as flags or in the YAML file). Each method file states its own in one line."""

    learning_rate: float
    """AdamW's peak learning rate."""
    lr_scheduler_type: str
    """The learning-rate schedule (a TrainArgs.lr_scheduler_type choice)."""


DEFAULT_RECIPE = Recipe(5e-3, "cosine")
"""A registered method that states no recipe gets this one (softprompt's defaults before recipes)."""


@dataclass
class TaskData:
    """What a method may read of the training data as it creates its module: the loaded conversations
    (training and validation rows, before the split), loaded only when a method reads them."""

    load: Callable[[], Sequence[Conversation]]
    """Returns the conversations; called once, on first use."""

    @functools.cached_property
    def conversations(self) -> Sequence[Conversation]:
        return self.load()

    def answers(self) -> Counter[str]:
        """How often each final answer (stripped; empty ones left out) occurs."""
        return Counter(a for a in (c.prompt_and_answer()[1].strip() for c in self.conversations) if a)

    def instructions(self) -> Counter[str]:
        """How often each instruction occurs: the first line of each conversation's last prompt (alpaca puts
        its instruction there, its input on the lines after)."""
        prompts = (c.prompt_and_answer()[0] for c in self.conversations)
        lines = (turns[-1]["content"].strip().split("\n", 1)[0].strip() for turns in prompts if turns)
        return Counter(line for line in lines if line)


@dataclass(frozen=True)
class MethodSpec:
    """What softprompt needs to know of a method; the module it creates holds only trainable parameters."""

    name: str
    """The ``--finetuning_type`` that selects it."""
    kind: Kind
    """'prompt': the module's ``prompt_embeds()`` (L, d) runs through the frozen base once to give the prefix K/V;
    'prefix': its ``prefix_kv()`` is the prefix K/V; 'weights': it trains the base model's own weights, no prefix."""
    build: Callable[..., nn.Module]
    """``build(base, tokenizer, method_args, generator)``: a new trainable module for ``base``."""
    peft_type: str | None = None
    """PEFT's ``peft_type`` in adapter_config.json; None: the method writes a whole model folder instead."""
    from_checkpoint: Callable[..., nn.Module] | None = None
    """``from_checkpoint(config, state, where, base=None, trainable=False)``: the module a PEFT adapter folder holds
    (a prefix method ignores ``base``; a weights method puts itself into ``base``)."""
    arguments: tuple[str, ...] = ()
    """The MethodArgs fields it reads; set away from their defaults for another method, they are ignored with a
    warning."""
    check: Callable[[MethodArgs], None] | None = None
    """Raise ArgumentError for argument combinations the method cannot honour (before any model is loaded)."""
    incompatibility: Callable[[dict[str, Any], Any], str | None] | None = None
    """``incompatibility(config, base)``: why a saved adapter cannot sit on ``base`` (None: it can); unset, the
    config's ``token_dim`` must equal the base's hidden size."""
    config_fields: Mapping[str, ConfigField] = dataclasses.field(default_factory=dict)
    """The adapter_config.json fields ``from_checkpoint`` reads and what each may hold; ``read_adapter`` checks
    them before the method sees the config."""
    base_problem: Callable[[Any], str | None] | None = None
    """``base_problem(base)``: why the method cannot work on this base model at all (None: it can); a module is
    neither created nor loaded for such a base."""
    check_state: Callable[[dict[str, Any], dict[str, torch.Tensor], str], None] | None = None
    """``check_state(config, state, where)``: raise CheckpointError unless the tensors have the names and shapes
    the (checked) config gives; ``read_adapter`` calls it once, before the folder is used."""
    recipe: Recipe = DEFAULT_RECIPE
    """Its --learning_rate and --lr_scheduler_type when the user gives none."""
    carry_on: Callable[[nn.Module, MethodArgs, torch.Generator], None] | None = None
    """``carry_on(module, args, generator)``: make a loaded adapter (--adapter_name_or_path) ready to continue
    training under ``args``, in place (prompt_tuning: a new residual MLP); unset: it trains as loaded."""
    reads_data: bool = False
    """``build`` takes a fifth argument, the :class:`TaskData` of the run (None outside training), e.g. to start a
    prompt from the task's label words."""

    @property
    def served(self) -> bool:
        """A prefix: one base model serves it beside other tasks in one batch (``softprompt serve``)."""
        return self.kind != "weights"

    @property
    def exportable(self) -> bool:
        """Input embeddings (L, d) that ``softprompt export --format embeddings`` can write."""
        return self.kind == "prompt"

    @property
    def writes_model_folder(self) -> bool:
        """Its result is a whole model folder (config.json + weights), not a PEFT adapter."""
        return self.peft_type is None

    def create(self, base, tokenizer, args: MethodArgs, generator: torch.Generator,
               data: TaskData | None = None) -> nn.Module:
        """A new trainable module for ``base``, initialised as ``args`` say (and, for a method that
        ``reads_data``, the training ``data``); it carries this spec. A prompt or prefix that leaves no room in
        the model's context for the text is refused (before it is built, when --num_virtual_tokens gives its
        length), and so is a base softprompt cannot run (:func:`check_supported`)."""
        check_supported(base, getattr(base, "name_or_path", None) or "the base model")
        why = self.base_problem(base) if self.base_problem is not None else None
        if why:
            raise ArgumentError(f"--finetuning_type {self.name} cannot work on this "
                                f"{getattr(base.config, 'model_type', 'base')} model: {why}")
        if self.kind != "weights" and args.num_virtual_tokens is not None:
            _check_fits(base, args.num_virtual_tokens, f"--num_virtual_tokens {args.num_virtual_tokens}")
        module = self.build(base, tokenizer, args, generator, *((data,) if self.reads_data else ()))
        length = getattr(module, "num_virtual_tokens", None)
        if self.kind != "weights" and length is not None:  # a length taken from --prompt_tuning_init_text
            _check_fits(base, length, f"a soft prompt of {length} tokens (from --prompt_tuning_init_text)")
        return _stamp(module, self)

    def load(self, config: dict[str, Any], state: dict[str, torch.Tensor], where: str, base=None,
             trainable: bool = False) -> nn.Module:
        """The module an adapter folder's files hold; it carries this spec."""
        if self.from_checkpoint is None:
            raise CheckpointError(f"{where}: a {self.name} result is a model folder, not an adapter")
        return _stamp(self.from_checkpoint(config, state, where, base=base, trainable=trainable), self)


def soft_input_problem(base) -> str | None:
    """Why ``base`` cannot take a soft prompt, embeddings that are no token's (None: it can)."""
    if getattr(base.config.get_text_config(), "hidden_size_per_layer_input", None):  # Gemma 3n, Gemma 4 E2B/E4B
        return ("its layers also look up each token's own per-layer embedding (hidden_size_per_layer_input), "
                "which a virtual token does not have")
    return None


def _check_fits(base, length: int, what: str) -> None:
    """An ArgumentError when ``length`` virtual tokens leave no room for text in ``base``'s context."""
    context = context_length(base)
    if length >= context:
        raise ArgumentError(f"{what} does not fit the model's context of {context} tokens: the soft prompt and the "
                            f"text share it, so it must be below {context}")


def _stamp(module: nn.Module, spec: MethodSpec) -> nn.Module:
    module.__dict__[SPEC_ATTR] = spec  # a plain attribute: not a parameter, not a submodule, not saved
    return module


REGISTRY: dict[str, MethodSpec] = {}
"""finetuning_type -> spec, in registration order."""


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` (a method of that name or PEFT type registered before is replaced)."""
    for name, old in list(REGISTRY.items()):
        if name != spec.name and spec.peft_type is not None and old.peft_type == spec.peft_type:
            raise ValueError(f"method {spec.name!r}: peft_type {spec.peft_type!r} belongs to method {name!r} already")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name: str) -> MethodSpec:
    """The spec of ``--finetuning_type name``; an ArgumentError listing the registered ones if there is none."""
    if name not in REGISTRY:
        raise ArgumentError(f"--finetuning_type must be one of {', '.join(REGISTRY)}; got {name!r}")
    return REGISTRY[name]


def by_peft_type(peft_type: str) -> MethodSpec | None:
    """The method that saves adapters of PEFT type ``peft_type`` (None: no such method)."""
    return next((s for s in REGISTRY.values() if s.peft_type is not None and s.peft_type == peft_type), None)


def of(module: nn.Module | None) -> MethodSpec | None:
    """The spec of a module made by :meth:`MethodSpec.create` or :meth:`MethodSpec.load` (None for None)."""
    return None if module is None else getattr(module, SPEC_ATTR)


def peft_types(kind: str | None = None) -> list[str]:
    """The PEFT types of the registered methods (of one kind, or of every method that saves an adapter)."""
    return [s.peft_type for s in REGISTRY.values() if s.peft_type and (kind is None or s.kind == kind)]


def resolve(args: MethodArgs) -> MethodArgs:
    """``args`` checked against the chosen method: an unknown method, or a combination the method cannot
    honour, is an ArgumentError; each argument only other methods read (set away from its default) is
    reset to its default with a one-line warning. Returns a new MethodArgs; calling it again warns no more."""
    spec = get(args.finetuning_type)
    readers = {f: [s.name for s in REGISTRY.values() if f in s.arguments] for s in REGISTRY.values()
               for f in s.arguments}
    reset = {}
    for f in dataclasses.fields(args):
        users = readers.get(f.name)
        if not users or spec.name in users or getattr(args, f.name) == f.default:
            continue
        log.warning("--%s does not apply to --finetuning_type %s; ignored", f.name, spec.name)
        reset[f.name] = f.default
    args = dataclasses.replace(args, **reset) if reset else args
    if spec.check is not None:
        spec.check(args)
    return args


def with_recipe(spec: MethodSpec, args: TrainArgs) -> tuple[TrainArgs, str]:
    """``args`` with the method's recipe where --learning_rate / --lr_scheduler_type were not given (None), and
    the log line that says each value and where it came from."""
    lr = args.learning_rate if args.learning_rate is not None else spec.recipe.learning_rate
    schedule = args.lr_scheduler_type if args.lr_scheduler_type is not None else spec.recipe.lr_scheduler_type
    line = (f"{spec.name}: learning_rate {lr:g} ({'given' if args.learning_rate is not None else 'method default'}), "
            f"lr_scheduler_type {schedule} ({'given' if args.lr_scheduler_type is not None else 'method default'})")
    if (lr, schedule) != (args.learning_rate, args.lr_scheduler_type):
        args = dataclasses.replace(args, learning_rate=lr, lr_scheduler_type=schedule)
    return args, line
