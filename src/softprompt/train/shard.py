"""``--fsdp full_shard``: the frozen base sharded across the processes (FSDP2), the adapter replicated.

Every decoder layer becomes an FSDP unit (``torch.distributed.fsdp.fully_shard``): each process
keeps 1/N of its weights and all-gathers the rest only while the layer runs forward or backward.
The decoder's own weights (token embeddings, final norm) form one more unit and an untied LM head
another; a tied embedding / LM head matrix stays whole on every process, because the head runs
outside the decoder's forward. The adapter (the soft prompt, the p-tuning encoder, the prefix
K/V) is small: it stays a plain tensor on every process, and its gradient is averaged across the
processes after the last micro-batch of an update (:func:`sync_replicated_grads`), as DDP would.

The prefix pass needs one more thing under sharding, done by the engine: see
:func:`softprompt.engine.forward.is_sharded`.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from softprompt.config import ArgumentError

log = logging.getLogger("softprompt")

MARK = "softprompt_fsdp"
"""Attribute set on the AdaptedLM whose base :func:`shard_base` sharded."""

NOT_ACCELERATE = {
    DistributedType.FSDP: "Accelerate's FSDP plugin would shard the adapter as well",
    DistributedType.DEEPSPEED: "DeepSpeed ZeRO-3 is not supported yet (untested: deepspeed needs a GPU build)",
}


def shard_base(model: nn.Module, accelerator: Accelerator, fsdp: str) -> bool:
    """Shard ``model.base`` (an AdaptedLM's frozen base) when ``fsdp`` asks; whether it did.

    A sharded model is not handed to ``accelerator.prepare`` (no DDP around it).
    """
    if accelerator.distributed_type in NOT_ACCELERATE:
        raise ArgumentError(f"{NOT_ACCELERATE[accelerator.distributed_type]}: launch with a plain multi-process "
                            "config (examples/accelerate/ddp.yaml, torchrun or --nproc_per_node N) and "
                            "--fsdp full_shard, which shards the frozen base and keeps the adapter whole")
    if not fsdp:
        return False
    base = model.base
    if any(p.requires_grad for p in base.parameters()):
        raise ArgumentError("--fsdp full_shard shards a frozen base; this method trains the base's own weights "
                            "(use a prompt method: prompt_tuning, p_tuning, prefix_tuning)")
    if accelerator.num_processes < 2:
        log.warning("--fsdp full_shard needs several processes (torchrun, accelerate launch or --nproc_per_node N); "
                    "one process: the base stays whole")
        return False
    from torch.distributed.fsdp import fully_shard

    decoder, head = base.get_decoder(), base.get_output_embeddings()
    for layer in _decoder_layers(decoder):
        fully_shard(layer)  # (out, in) weights -> 1/N row shards each
    tied = head is not None and head.weight is base.get_input_embeddings().weight
    fully_shard(decoder, ignored_params={head.weight} if tied else None)
    if head is not None and not tied:
        fully_shard(head)
    _rest_to(model, accelerator.device)  # fully_shard placed the shards; the adapter and a tied head follow
    setattr(model, MARK, True)
    local, whole = _bytes(base)
    log.info("--fsdp full_shard: %d decoder layers sharded over %d processes; each holds %.2f MB of the base's "
             "%.2f MB%s", len(_decoder_layers(decoder)), accelerator.num_processes, local / 2**20, whole / 2**20,
             " (the tied embedding whole)" if tied else "")
    return True


def _bytes(module: nn.Module) -> tuple[int, int]:
    """Parameter bytes this process holds, and those of the whole module."""
    local = whole = 0
    for p in module.parameters():
        whole += p.numel() * p.element_size()
        local += (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
    return local, whole


def _rest_to(model: nn.Module, device: torch.device) -> None:
    """Move what FSDP does not manage (plain parameters and buffers) to ``device``; shards stay put."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if not isinstance(p, DTensor) and p.device != device:
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
