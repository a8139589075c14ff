"""Setting up training: the float32 policy, its DDP/FSDP wrapper, the optimizer and scheduler, resumed state."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from r1kit.train.checkpointing import load_trainer_state
from r1kit.train.distributed import DistInfo, load_optimizer_state, wrap_model
from r1kit.train.optim import build_optimizer


def load_policy(model_path: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    """The trainable model: always float32 master weights (bf16 compute comes from autocast_context)."""
    from r1kit.models.checkpoint import load_model  # (the model package is heavy: loaded when training starts)

    model = load_model(str(model_path), dtype=torch.float32, device=device)
    model.train()
    return model


def prepare_training(model_path: str | os.PathLike, ckpt: Path | None, info: DistInfo, cfg):
    """The policy (from `ckpt` when resuming), its DDP/FSDP wrapper, optimizer and scheduler, with their state
    restored from `ckpt`. Returns (policy, train_model, optimizer, scheduler, trainer_state or None)."""
    policy = load_policy(ckpt / "model" if ckpt else model_path, info.device)
    train_model = wrap_model(policy, info, cfg.fsdp)      # before the optimizer: FSDP2 replaces the parameters
    optimizer, scheduler = build_optimizer(policy, cfg)
    state = None
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        if state["optimizer"] is not None:        # (None: an FSDP checkpoint of older r1kit, weights only)
            load_optimizer_state(policy, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return policy, train_model, optimizer, scheduler, state
