"""MoE load balancing in training (DeepSeek-V3): the sequence-wise balance loss and the aux-loss-free router-bias
update, for any model (dense models have neither)."""
from __future__ import annotations

import torch

from r1kit.train.distributed import DistInfo, all_reduce_sum


def router_bias_update(model: torch.nn.Module, gamma: float, info: DistInfo | None = None) -> None:
    """Aux-loss-free MoE balancing (deepseek_v3): nudge each router's expert bias toward equal load.

    Models without MoE routers have nothing to update; the models package owns the rule itself. Under torchrun the
    expert loads are summed over ranks first, so every rank applies the same update from the global batch's load
    (the bias is a buffer: FSDP never synchronises it, and DDP would only broadcast rank 0's local update)."""
    if gamma <= 0:
        return
    fn = getattr(model, "update_router_bias", None)
    if fn is None:
        return
    if info is not None and info.enabled and hasattr(model, "moe_layers"):
        layers = [m for m in model.moe_layers() if m.load is not None]
        if layers:
            total = all_reduce_sum(torch.stack([m.load for m in layers]), info)  # [layers, E] over all ranks
            for m, load in zip(layers, total):
                m.load = load.to(m.load)
    fn(gamma)


def aux_loss(model: torch.nn.Module) -> torch.Tensor | float:
    """The MoE sequence-wise balance loss of the last training forward (deepseek_v3), 0 for dense models."""
    fn = getattr(model, "aux_loss", None)
    return fn() if fn is not None else 0.0
