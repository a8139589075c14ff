"""Multi-process training under torchrun: process group, model wrapping, reductions, rank-0-only files.

`torchrun --nproc-per-node N -m r1kit train sft|grpo ...` sets WORLD_SIZE/RANK/LOCAL_RANK; `init_distributed` then
joins the process group (gloo on CPU, nccl on GPU). Without torchrun everything here is a no-op on one process, so
the trainers have a single code path. Each rank works on its own share of the global batch (SFT rows, GRPO whole
prompt groups); losses are normalised by the GLOBAL token/sequence counts and the model is wrapped in DDP, whose
gradient averaging is undone by scaling the loss by world_size, so N processes compute exactly the gradient one
process would on the whole batch. `fsdp=True` shards parameters with FSDP2's `fully_shard` instead of DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from r1kit.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model: torch.nn.Module, info: DistInfo, fsdp: bool = False) -> torch.nn.Module:
    """DDP (or FSDP2 fully_shard) around `model` when running on several processes; `model` itself otherwise."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, "model", model), "layers", [])
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    # MoE experts that receive no token on a rank get no gradient there: find_unused_parameters handles that.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _fsdp_modules(model: torch.nn.Module) -> list:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def gather_for_inference(model: torch.nn.Module) -> None:
    """FSDP2: all-gather every shard before a rollout, so ranks can run different numbers of engine steps."""
    for m in _fsdp_modules(model):
        m.unshard()


def reshard(model: torch.nn.Module) -> None:
    for m in _fsdp_modules(model):
        m.reshard()


def full_model_for_saving(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module to hand to save_model: `model` itself, or for FSDP2 a CPU copy with the gathered full weights
    (collective: every rank must call it; only rank 0 gets the copy, others None)."""
    if not _fsdp_modules(model):
        return model
    import copy

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    from r1kit.models.registry import build_model

    clone = build_model(copy.deepcopy(model.config), device="cpu", dtype="float32", init=False)
    clone.load_state_dict(full)
    return clone


def optimizer_state_for_saving(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict for a checkpoint. FSDP2: the full (unsharded) state gathered to CPU, keyed by
    parameter name (collective: every rank must call it; rank 0 saves it); otherwise `optimizer.state_dict()`."""
    if not _fsdp_modules(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of `optimizer_state_for_saving`. FSDP2 (collective): rank 0's full state is broadcast and every
    rank keeps its own shards."""
    if not _fsdp_modules(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state if dist.get_rank() == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _all_reduce(values: list[float] | torch.Tensor, info: DistInfo, op) -> torch.Tensor:
    """Reduce a small vector of numbers over ranks with `op` (returned as a float64 CPU tensor)."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if info.enabled:
        dev_t = t.to(info.device) if info.device.type == "cuda" else t
        dist.all_reduce(dev_t, op=op)
        t = dev_t.cpu()
    return t


def all_reduce_sum(values: list[float] | torch.Tensor, info: DistInfo) -> torch.Tensor:
    return _all_reduce(values, info, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float] | torch.Tensor, info: DistInfo) -> torch.Tensor:
    return _all_reduce(values, info, dist.ReduceOp.MAX)


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
