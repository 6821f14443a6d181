"""Argument dataclasses, with LLaMA-Factory's names (:mod:`softprompt.arguments` fills them from flags and YAML).

Each field's attribute docstring is its ``--help`` text. Validation sits next to the fields,
in ``__post_init__``, and raises :class:`ArgumentError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from softprompt.defaults import MAX_NEW_TOKENS, SEED_LIMIT, SEED_MIN, TEMPERATURE_MAX
from softprompt.files import one_line

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_NUM_VIRTUAL_TOKENS = 20
"""A prompt method's length when neither --num_virtual_tokens nor an init text gives one."""
INITS = ("random", "sample_vocab", "text", "label")
"""The built-in --prompt_tuning_init values (besides a module:function hook)."""


class ArgumentError(ValueError):
    """A user's argument is wrong; the message names it and says what was expected."""


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?")


def parse_duration(text: Any, flag: str) -> float | None:
    """A training-time budget in seconds: ``600``, ``600s``, ``10m``, ``1h30m``, ``1.5h`` (None / empty: no
    budget); anything else, or zero, is an :class:`ArgumentError` naming ``flag``."""
    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return None
    match = _DURATION.fullmatch(str(text).strip().lower().replace(" ", ""))
    if match and any(match.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        if hours * 3600 + minutes * 60 + seconds > 0:
            return hours * 3600 + minutes * 60 + seconds
    raise ArgumentError(f"{flag} expects a positive duration such as 600, 600s, 10m or 1h30m, got {str(text)!r}")


def parse_token_count(text: Any, flag: str) -> int | None:
    """A token budget: a positive whole number, optionally with k or M (``50000``, ``50k``, ``1.5M``)."""
    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([km]?)", str(text).strip().lower().replace("_", ""))
    if match and float(match[1]) > 0:
        return max(1, round(float(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2]]))
    raise ArgumentError(f"{flag} expects a positive number of tokens such as 50000, 50k or 1.5M, got {str(text)!r}")


def check_seed(seed: int) -> None:
    """``--seed`` must be a seed torch takes (the server's ``seed`` field has the same range)."""
    if not SEED_MIN <= seed < SEED_LIMIT:
        raise ArgumentError(f"--seed must be in [-2**63, 2**64), what torch takes, got {seed}")


@dataclass
class ModelArgs:
    model_name_or_path: str = DEFAULT_MODEL
    """Base model: a local Hugging Face folder, a .gguf file, or the alias 'smollm2-135m-instruct'."""
    adapter_name_or_path: str | None = None
    """Folder of a trained adapter (PEFT format) to load on top of the base model."""
    cache_dir: str | None = None
    """Where converted GGUF models are cached (default: $SOFTPROMPT_CACHE or ~/.cache/softprompt)."""
    trust_remote_code: bool = False
    """Accepted for LLaMA-Factory compatibility; remote code is never downloaded."""
    quantization_bit: int | None = None
    """Quantize the frozen base's linear layers to 8 bits (LLM.int8()) or 4 bits (NF4) as it loads, through
    bitsandbytes, on a GPU or on the CPU; the adapter stays fp32 and trains. Prompt methods and lora (QLoRA)."""

    def __post_init__(self) -> None:
        if self.quantization_bit not in (None, 8, 4):
            raise ArgumentError(f"--quantization_bit must be 8 or 4 (bitsandbytes' LLM.int8() or NF4), "
                                f"got {self.quantization_bit}")


@dataclass
class DataArgs:
    dataset: str | None = None
    """Dataset name(s) from dataset_info.json, comma-separated."""
    dataset_dir: str = "data"
    """Folder holding dataset_info.json and the dataset files."""
    template: str | None = None
    """Chat template: unset uses the tokenizer's own; or one of 'default', 'alpaca', 'empty', or a .jinja file."""
    cutoff_len: int = 1024
    """Maximum tokens of prompt + response; longer examples are truncated (the response keeps its share)."""
    max_source_length: int | None = None
    """Old LLaMA-Factory name: maximum prompt tokens (with max_target_length it replaces cutoff_len)."""
    max_target_length: int | None = None
    """Old LLaMA-Factory name: maximum response tokens."""
    train_on_prompt: bool = False
    """Compute the loss on the prompt tokens as well (default: assistant turns only)."""
    max_samples: int | None = None
    """Use at most this many examples of each dataset (for quick runs)."""
    val_size: float = 0.0
    """Validation split: a fraction in (0, 1) or a number of examples (>= 1)."""
    overwrite_cache: bool = False
    """Accepted for LLaMA-Factory compatibility; softprompt tokenizes in memory and keeps no cache."""
    preprocessing_num_workers: int | None = None
    """Accepted for LLaMA-Factory compatibility; tokenization runs in-process."""

    def __post_init__(self) -> None:
        if self.cutoff_len < 2:
            raise ArgumentError(f"--cutoff_len must be at least 2, got {self.cutoff_len}")
        for name in ("max_source_length", "max_target_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArgumentError(f"--{name} must be a positive number of tokens, got {value}")
        if self.val_size < 0 or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            raise ArgumentError(
                f"--val_size must be a fraction in [0, 1) or a whole number of examples, got {self.val_size}"
            )
        if self.max_samples is not None and self.max_samples < 1:
            raise ArgumentError(f"--max_samples must be at least 1, got {self.max_samples}")

    def require_dataset(self) -> str:
        """``--dataset``, for a command that reads data; an ArgumentError when it is unset."""
        if self.dataset is None:
            raise ArgumentError("--dataset is required: name(s) from dataset_info.json in --dataset_dir")
        return self.dataset


@dataclass
class MethodArgs:
    finetuning_type: str = "prompt_tuning"
    """Training method, one registered in softprompt.methods: a prompt method (prompt_tuning, p_tuning,
    prefix_tuning), LoRA (through peft), freeze (only some layers train) or full (every weight trains)."""
    num_virtual_tokens: int | None = None
    """Length of the soft prompt (default 20, or the token count of prompt_tuning_init_text)."""
    prompt_tuning_init: str = "random"
    """Initialisation: 'random', 'sample_vocab', 'text' (prompt_tuning_init_text, or the dataset's most common
    instruction), 'label' (Lester et al. 2021: one virtual token per label word, the mean of its tokens'
    embeddings, then the instruction's tokens, then sampled vocabulary), or 'module:function' (a hook called as
    fn(num_virtual_tokens, embedding_weight, tokenizer) -> tensor (num_virtual_tokens, hidden))."""
    prompt_tuning_init_text: str | None = None
    """Text whose token embeddings start the prompt (tiled or cut to num_virtual_tokens); implies init 'text'.
    With init 'label': the instruction after the label words. With prefix_tuning: the text's per-layer K/V
    (a prefill of the frozen model) start the prefix."""
    label_words: str | None = None
    """Init 'label': the task's label words, comma-separated (default: the training data's distinct answers,
    when there are at most 20 of at most 3 words each); the same flag as eval's."""
    prompt_tuning_reparam: Literal["none", "residual"] = "none"
    """prompt_tuning: 'residual' trains the prompt P through a bottleneck MLP with a skip connection shared by
    the tokens, P + LayerNorm(up(ReLU(down(P)))) (Razdaibiedina et al. 2023, Residual Prompt Tuning); the
    adapter saved is that result, a plain PROMPT_TUNING adapter."""
    reparam_hidden_size: int = 400
    """prompt_tuning_reparam residual: the MLP's bottleneck width (the paper's experiments use 400)."""
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    """p_tuning: the prompt encoder, an MLP (3 linear layers) or a bidirectional LSTM plus an MLP head."""
    encoder_hidden_size: int | None = None
    """p_tuning, prefix_tuning: hidden size of the prompt encoder / prefix projection (default: PEFT's,
    the model's hidden size; for prefix_tuning the K/V width, n_kv_heads * head_dim)."""
    encoder_num_layers: int = 2
    """p_tuning with LSTM: number of LSTM layers (PEFT's MLP always has 3 linear layers)."""
    encoder_dropout: float = 0.0
    """p_tuning with LSTM: dropout between the LSTM layers."""
    prefix_projection: bool = False
    """prefix_tuning: produce the per-layer K/V through a 2-layer tanh MLP instead of training them directly."""
    lora_rank: int = 8
    """lora: rank r of the update B @ A."""
    lora_alpha: int | None = None
    """lora: scale numerator; the update is multiplied by lora_alpha / lora_rank (default: 2 * lora_rank)."""
    lora_dropout: float = 0.0
    """lora: dropout on the LoRA branch's input."""
    lora_target: str = "all"
    """lora: 'all' (every linear layer but the LM head) or comma-separated module names (e.g. q_proj,v_proj)."""
    additional_target: str | None = None
    """lora: comma-separated modules trained in full and saved beside the adapter (PEFT's modules_to_save)."""
    use_rslora: bool = False
    """lora: rank-stabilised scaling, lora_alpha / sqrt(lora_rank)."""
    use_dora: bool = False
    """lora: weight-decomposed LoRA (DoRA)."""
    freeze_trainable_layers: int = 2
    """freeze: how many decoder layers train: n > 0 the last n, n < 0 the first |n|."""
    freeze_trainable_modules: str = "all"
    """freeze: inside those layers, 'all' or comma-separated module names (e.g. mlp,self_attn)."""
    freeze_extra_modules: str | None = None
    """freeze: comma-separated modules outside the decoder layers that train too (e.g. embed_tokens,norm)."""

    def labels(self) -> list[str]:
        """The --label_words as a list (empty when unset)."""
        return [w.strip() for w in (self.label_words or "").split(",") if w.strip()]

    @property
    def init(self) -> str:
        """The initialisation in effect: ``text`` when only --prompt_tuning_init_text is given."""
        if self.prompt_tuning_init_text is not None and self.prompt_tuning_init == "random":
            return "text"
        return self.prompt_tuning_init

    def __post_init__(self) -> None:
        init = self.init
        if init not in INITS and ":" not in init:
            raise ArgumentError(f"--prompt_tuning_init must be {', '.join(INITS)} or module:function, got {init!r}")
        if self.prompt_tuning_init_text is not None and not self.prompt_tuning_init_text.strip():
            raise ArgumentError("--prompt_tuning_init_text is empty; give some text, or leave it out")
        words = self.labels()
        if self.label_words is not None and (not words or len(set(words)) != len(words)):
            raise ArgumentError(f"--label_words needs one or more different comma-separated words, each once, "
                                f"got {self.label_words!r}")
        if self.reparam_hidden_size < 1:
            raise ArgumentError(f"--reparam_hidden_size must be at least 1, got {self.reparam_hidden_size}")
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise ArgumentError(f"--num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ArgumentError(f"--encoder_hidden_size must be at least 1, got {self.encoder_hidden_size}")
        if self.encoder_num_layers < 1:
            raise ArgumentError(f"--encoder_num_layers must be at least 1, got {self.encoder_num_layers}")
        if not 0 <= self.encoder_dropout < 1:
            raise ArgumentError(f"--encoder_dropout must be in [0, 1), got {self.encoder_dropout}")
        if self.lora_rank < 1:
            raise ArgumentError(f"--lora_rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ArgumentError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ArgumentError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target.strip(" ,"):
            raise ArgumentError("--lora_target must be 'all' or module names, got an empty value")
        if self.freeze_trainable_layers == 0:
            raise ArgumentError("--freeze_trainable_layers must not be 0: n > 0 trains the last n layers, "
                                "n < 0 the first |n|")


@dataclass
class TrainArgs:
    output_dir: str = "output"
    """Where the adapter, checkpoints, logs and the loss plot are written."""
    overwrite_output_dir: bool = False
    """Allow writing into a non-empty output_dir: what softprompt wrote there is removed, other files stay."""
    do_train: bool = True
    """Accepted for LLaMA-Factory compatibility (softprompt train always trains)."""
    do_eval: bool = False
    """Accepted for LLaMA-Factory compatibility (validation runs whenever val_size > 0)."""
    per_device_train_batch_size: int = 4
    """Examples per step on each device."""
    per_device_eval_batch_size: int = 8
    """Examples per validation batch."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before one optimizer update."""
    learning_rate: float | None = None
    """Peak learning rate of AdamW (default: the method's recipe, which the first log line of training prints)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 disables clipping)."""
    num_train_epochs: float = 3.0
    """Epochs to train (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer updates to run; -1 means use num_train_epochs."""
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] | None = None
    """Learning-rate schedule (default: the method's recipe, which the first log line of training prints)."""
    warmup_ratio: float = 0.0
    """Fraction of the updates spent warming up the learning rate."""
    warmup_steps: int = 0
    """Updates spent warming up (overrides warmup_ratio when > 0)."""
    logging_steps: int = 10
    """Log loss, learning rate, gradient norm and tokens/s every this many updates."""
    save_steps: int = 500
    """Write a checkpoint-N folder every this many updates (0 disables)."""
    save_total_limit: int | None = None
    """Keep at most this many checkpoint-N folders (oldest removed first)."""
    resume_from_checkpoint: str | None = None
    """Continue an interrupted run from a checkpoint-N folder, or 'true' for the newest in output_dir: restores the
    trainable parameters, optimizer, scheduler, step, data order and RNG state; output_dir is kept, its log appended to."""
    eval_steps: int | None = None
    """Validation loss every this many updates when val_size > 0 (default: only at the end)."""
    seed: int = 42
    """Random seed for initialisation, shuffling and the validation split."""
    fp16: bool = False
    """Mixed precision fp16 where the device supports it (on a CPU: fp32, with a notice)."""
    bf16: bool = False
    """Mixed precision bf16 where the device supports it."""
    plot_loss: bool = True
    """Save training_loss.png (and the validation loss) at the end."""
    report_to: str = "none"
    """Accepted for LLaMA-Factory compatibility; softprompt logs to trainer_log.jsonl."""
    early_stopping_patience: int | None = None
    """Stop after this many validations in a row without a lower validation loss (needs val_size and eval_steps)."""
    load_best_model_at_end: bool = False
    """Write the adapter of the lowest validation loss to output_dir at the end, not the last one (needs val_size)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them: less memory,
    about a third more compute. Works with every method, prefix tuning included."""
    shared_prefix: bool = True
    """Run the tokens every row of a batch starts with (the chat template's system text, a dataset's instruction;
    at least 4, before any label) once per batch, batch 1, right after the soft prompt (or prefix tuning's K/V, or
    alone for lora/full/freeze), with gradient, and only each row's own tokens after them: the same loss and
    gradients for less compute. Off while the base drops out in training (LoRA's dropout included: each row
    draws its own masks) and on an --fsdp sharded base."""
    group_by_prefix: bool = False
    """Shuffle the training rows as usual, then, within windows of 64 batches, sort them by their tokens so that
    rows with the same leading tokens (e.g. the same instruction) share batches, and shuffle the batches' order:
    longer shared prefixes (--shared_prefix) in datasets that mix instructions. Deterministic under --seed."""
    fsdp: str = ""
    """'full_shard' (or LLaMA-Factory's 'full_shard auto_wrap'): with several processes, shard the frozen base's
    decoder layers across them (FSDP2) and keep the adapter whole on each; for a base that does not fit one device."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config with ZeRO stage 3 (LLaMA-Factory's ds_z3_config.json works): with several processes,
    partition the frozen base's weights across them (its zero_optimization section applies, offload included) and
    keep the adapter whole on each; its optimizer, scheduler and precision sections are not used."""
    max_train_seconds: float | None = dataclasses.field(
        default=None, metadata={"parse": lambda text: parse_duration(text, "--max_train_seconds")})
    """Stop after this much training time (600, 600s, 10m, 1h30m; time in updates: loading, validation and
    checkpoints not counted), then save and report as usual. The learning-rate schedule (and warmup_ratio) runs on
    the fraction of the budget used; num_train_epochs is not used (the data repeats), max_steps still caps."""
    max_train_tokens: int | None = dataclasses.field(
        default=None, metadata={"parse": lambda text: parse_token_count(text, "--max_train_tokens")})
    """Stop after this many real (non-padding) training tokens (50000, 50k, 1.5M); the schedule as with
    max_train_seconds."""

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ArgumentError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.max_steps <= 0 and self.max_steps != -1:
            raise ArgumentError(f"--max_steps must be positive or -1, got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ArgumentError(f"--num_train_epochs must be positive, got {self.num_train_epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ArgumentError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.logging_steps < 1:
            raise ArgumentError(f"--logging_steps must be at least 1, got {self.logging_steps}")
        for name, low, note in (("warmup_steps", 0, ""), ("save_steps", 0, " (0 disables)"),
                                ("save_total_limit", 1, ""), ("eval_steps", 1, ""), ("weight_decay", 0, ""),
                                ("max_grad_norm", 0, " (0 disables clipping)"), ("adam_epsilon", 0, "")):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ArgumentError(f"--{name} must be at least {low}{note}, got {value:g}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be in [0, 1), got {getattr(self, name):g}")
        if str(self.resume_from_checkpoint).strip().lower() in ("none", "false", ""):
            self.resume_from_checkpoint = None  # YAML false / an empty value: start afresh
        check_seed(self.seed)
        if self.fp16 and self.bf16:
            raise ArgumentError("--fp16 and --bf16 are exclusive: pick one")
        words = set(self.fsdp.split())
        if words and ("full_shard" not in words or words - {"full_shard", "auto_wrap"}):
            raise ArgumentError(f"--fsdp {self.fsdp!r}: supported is 'full_shard' (optionally with 'auto_wrap'); "
                                "the decoder layers are always the units")
        if self.deepspeed:
            if words:
                raise ArgumentError("--fsdp and --deepspeed both shard the base: pick one")
            read_deepspeed_config(self.deepspeed)
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ArgumentError(f"--early_stopping_patience must be at least 1, got {self.early_stopping_patience}")
            if not self.eval_steps:
                raise ArgumentError("--early_stopping_patience needs --eval_steps (and --val_size): "
                                    "it counts validations without improvement")
        self._check_budget()

    def _check_budget(self) -> None:
        for name in ("max_train_seconds", "max_train_tokens"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ArgumentError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps and (self.max_train_seconds or self.max_train_tokens):
            raise ArgumentError("--warmup_steps counts updates, which a budget (--max_train_seconds / "
                                "--max_train_tokens) leaves open: use --warmup_ratio, a fraction of the budget")


@dataclass
class GenerateArgs:
    max_new_tokens: int = MAX_NEW_TOKENS
    """Maximum tokens to generate per answer."""
    temperature: float = 0.0
    """Sampling temperature in [0, 2] (as the server's); 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens when sampling (0 = off)."""
    seed: int = 42
    """Random seed for sampling."""

    def __post_init__(self) -> None:
        """The server's limits (``serve.protocol``) too: a value one refuses, the other refuses."""
        if self.max_new_tokens < 1:
            raise ArgumentError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= TEMPERATURE_MAX:
            raise ArgumentError(f"--temperature must be in [0, {TEMPERATURE_MAX:g}], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ArgumentError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ArgumentError(f"--top_k must be at least 0 (0 = off), got {self.top_k}")
        check_seed(self.seed)


def as_dict(*objs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obj in objs:
        out.update(dataclasses.asdict(obj))
    return out


def read_deepspeed_config(path: str) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be a ZeRO stage 3 config."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArgumentError(f"--deepspeed {path}: file not found (give a DeepSpeed JSON config)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArgumentError(f"--deepspeed {path}: not a JSON file ({one_line(exc, 120)})") from None
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage != 3:
        raise ArgumentError(f"--deepspeed {path}: zero_optimization.stage is {stage!r}; softprompt uses DeepSpeed to "
                            "partition the frozen base's weights, which is stage 3")
    return config
