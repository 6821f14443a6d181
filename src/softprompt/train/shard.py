"""``--fsdp full_shard`` / ``--deepspeed ds_z3.json``: the frozen base sharded across the processes, the
adapter replicated.

Every decoder layer becomes an FSDP unit (``torch.distributed.fsdp.fully_shard``): each process
keeps 1/N of its weights and all-gathers the rest only while the layer runs forward or backward.
The decoder's own weights (token embeddings, final norm) form one more unit and an untied LM head
another; a tied embedding / LM head matrix stays whole on every process, because the head runs
outside the decoder's forward. The adapter (the soft prompt, the p-tuning encoder, the prefix
K/V) is small: it stays a plain tensor on every process, and its gradient is averaged across the
processes after the last micro-batch of an update (:func:`sync_replicated_grads`), as DDP would.

The prefix pass needs one more thing under FSDP, done by the engine: see
:func:`softprompt.engine.forward.is_sharded`.

With ``--deepspeed``, DeepSpeed's ZeRO stage 3 partitions the base instead, with no DeepSpeed
optimizer (the inference-style partitioning: ``deepspeed.initialize(model=base)``). Its hooks sit on
every submodule, so each one gathers its weights around its own forward and backward: the prefix
pass's K/V, which leave through the cache, get their ``k_proj``/``v_proj`` gathered too. With no
DeepSpeed optimizer step nothing releases what the backward gathered, so :func:`release_gathered`
does it after each update. The adapter stays plain, as with FSDP.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from softprompt import methods
from softprompt.config import ArgumentError, TrainArgs, read_deepspeed_config

log = logging.getLogger("softprompt")

MARK = "softprompt_sharded"
"""Attribute set on the AdaptedLM whose base :func:`shard_base` sharded."""
ENGINE = "_softprompt_zero3_engine"
"""Where the DeepSpeed engine of a ``--deepspeed`` run is kept (in the module's ``__dict__``: not a submodule)."""

NOT_ACCELERATE = {
    DistributedType.FSDP: "Accelerate's FSDP plugin would shard the adapter as well",
    DistributedType.DEEPSPEED: "Accelerate's DeepSpeed plugin would partition the adapter and own the optimizer",
}


def shard_base(model: nn.Module, accelerator: Accelerator, args: TrainArgs) -> bool:
    """Shard ``model.base`` (an AdaptedLM's frozen base) when --fsdp or --deepspeed asks; whether it did.

    A sharded model is not handed to ``accelerator.prepare`` (no DDP around it).
    """
    plugin = _accelerate_plugin(accelerator)
    if plugin is not None:
        raise ArgumentError(f"{NOT_ACCELERATE[plugin]}: launch with a plain multi-process "
                            "config (examples/accelerate/ddp.yaml, torchrun or --nproc_per_node N) and "
                            "--fsdp full_shard or --deepspeed CONFIG, which shard the frozen base and keep the "
                            "adapter whole")
    if not (args.fsdp or args.deepspeed):
        return False
    flag = "--fsdp full_shard" if args.fsdp else f"--deepspeed {args.deepspeed}"
    base = model.base
    if not methods.of(model.adapter).served:
        prefixes = ", ".join(s.name for s in methods.REGISTRY.values() if s.served)
        raise ArgumentError(f"{flag} shards a frozen base; this method trains the base's own weights "
                            f"(use a prompt method: {prefixes})")
    if accelerator.num_processes < 2:
        log.warning("%s needs several processes (torchrun, accelerate launch or --nproc_per_node N); "
                    "one process: the base stays whole", flag)
        return False
    if args.fsdp:
        units = _fsdp(base)
    else:
        units = _zero3(model, args, accelerator.num_processes)
    _rest_to(model, accelerator.device)  # the shards are placed; the adapter and a tied head follow
    setattr(model, MARK, True)
    local, whole = _bytes(base)
    log.info("%s: %s over %d processes; each holds %.2f MB of the base's %.2f MB", flag, units,
             accelerator.num_processes, local / 2**20, whole / 2**20)
    return True


def _accelerate_plugin(accelerator: Accelerator) -> DistributedType | None:
    """Accelerate's FSDP or DeepSpeed plugin, if the launch config asked for one. On a CPU Accelerate drops
    them without a word and runs plain data parallel; their environment variables still tell."""
    if accelerator.distributed_type in NOT_ACCELERATE:
        return accelerator.distributed_type
    for kind, name in ((DistributedType.FSDP, "ACCELERATE_USE_FSDP"), (DistributedType.DEEPSPEED,
                                                                         "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(name, "").lower() in ("1", "true"):
            return kind
    return None


def _fsdp(base: nn.Module) -> str:
    """FSDP2 over every decoder layer, then the rest of the decoder, then an untied head."""
    from torch.distributed.fsdp import fully_shard

    decoder, head = base.get_decoder(), base.get_output_embeddings()
    for layer in _decoder_layers(decoder):
        fully_shard(layer)  # (out, in) weights -> 1/N row shards each
    tied = head is not None and head.weight is base.get_input_embeddings().weight
    fully_shard(decoder, ignored_params={head.weight} if tied else None)
    if head is not None and not tied:
        fully_shard(head)
    return f"{len(_decoder_layers(decoder))} decoder layers sharded" + (" (the tied embedding whole)" if tied else "")


def _zero3(model: nn.Module, args: TrainArgs, world: int) -> str:
    """DeepSpeed ZeRO-3 partitioning of the frozen base (no DeepSpeed optimizer); the engine is kept for
    :func:`release_gathered`."""
    try:
        import deepspeed
    except ImportError:
        raise ArgumentError(f"--deepspeed {args.deepspeed}: the deepspeed package is not installed "
                            "(pip install deepspeed; make setup installs it)") from None
    config = deepspeed_config(read_deepspeed_config(args.deepspeed), args, model.base, world)
    engine, *_ = deepspeed.initialize(model=model.base, config=config)
    model.__dict__[ENGINE] = engine
    # DeepSpeed's collectives call a torch function that warns at every layer; the warning is DeepSpeed's to act on
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    zero = config["zero_optimization"]
    offload = zero.get("offload_param", {}).get("device", "none")
    return (f"the weights of over {zero['stage3_param_persistence_threshold']} elements partitioned by ZeRO-3"
            + (f" (offloaded to the {offload})" if offload != "none" else ""))


NOT_USED = ("optimizer", "scheduler", "fp16", "bf16", "gradient_clipping", "zero_allow_untested_optimizer")
"""Sections of a DeepSpeed config that do not apply: softprompt's AdamW trains the adapter, --bf16/--fp16
pick autocast, --max_grad_norm clips."""


def deepspeed_config(config: dict[str, Any], args: TrainArgs, base: nn.Module, world: int) -> dict[str, Any]:
    """The config handed to DeepSpeed: the user's ``zero_optimization`` with its "auto" values filled as the HF
    Trainer fills them (from the hidden size), and the batch sizes from softprompt's own arguments."""
    d = base.config.get_text_config().hidden_size
    auto = {"stage3_param_persistence_threshold": 10 * d, "reduce_bucket_size": d * d,
            "stage3_prefetch_bucket_size": int(0.9 * d * d)}
    zero = {"stage3_param_persistence_threshold": "auto", **config["zero_optimization"]}  # absent: as "auto"
    # an "auto" that does not depend on the model: DeepSpeed's own default
    zero = {k: auto[k] if v == "auto" else v for k, v in zero.items() if v != "auto" or k in auto}
    unused = [k for k in NOT_USED if k in config]
    if zero.pop("offload_optimizer", None) is not None:  # no DeepSpeed optimizer here
        unused.append("zero_optimization.offload_optimizer")
    if unused:
        log.info("--deepspeed %s: %s not used (the adapter is trained by softprompt, outside DeepSpeed)",
                 args.deepspeed, ", ".join(unused))
    batch, steps = args.per_device_train_batch_size, args.gradient_accumulation_steps
    return {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": steps,
            "train_batch_size": batch * steps * world, "zero_optimization": zero, "steps_per_print": 2**31 - 1}


def release_gathered(model: nn.Module) -> None:
    """After an update under --deepspeed: free the full weights the backward gathered (else they stay)."""
    engine = model.__dict__.get(ENGINE)
    if engine is not None:
        engine.empty_partition_cache()


def _bytes(module: nn.Module) -> tuple[int, int]:
    """Parameter bytes this process holds, and those of the whole module."""
    local = whole = 0
    for p in module.parameters():
        if hasattr(p, "ds_numel"):  # ZeRO-3: the full size, and this process's partition
            whole += p.ds_numel * p.element_size()
            local += p.ds_tensor.numel() * p.element_size()
            continue
        whole += p.numel() * p.element_size()
        local += (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
    return local, whole


def _rest_to(model: nn.Module, device: torch.device) -> None:
    """Move what FSDP does not manage (plain parameters and buffers) to ``device``; shards stay put."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if not isinstance(p, DTensor) and not hasattr(p, "ds_id") and p.device != device:  # ds_id: ZeRO-3's
            p.data = p.data.to(device)  # in place: a tied head and its embedding stay one tensor
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if not isinstance(buf, DTensor) and buf.device != device:
                module._buffers[name] = buf.to(device)


def _decoder_layers(decoder: nn.Module) -> list[nn.Module]:
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ArgumentError(f"--fsdp full_shard: {type(decoder).__name__} has no .layers to shard")
    return list(layers)


def sync_replicated_grads(model: nn.Module, num_processes: int) -> None:
    """Average the replicated (adapter) gradients over the processes of a sharded run; else nothing."""
    if not getattr(model, MARK, False):
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for the whole adapter
    dist.all_reduce(flat)
    flat /= num_processes
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
