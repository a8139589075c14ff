"""Group-relative advantages and the dynamic-sampling filter.

The formulas: docs/architecture.md, "GRPO, DAPO and Dr. GRPO losses". Rewards arrive flat, ordered group by group:
[r(p0,s0) .. r(p0,s_{G-1}), r(p1,s0) ..]. Every completion gets one advantage, shared by all of its tokens. The
group mean is always subtracted; `scale_rewards` chooses the division:
    group : by the group's std (GRPO paper / TRL default)
    batch : by the std of all rewards in the batch (more robust when a group's std is tiny)
    none  : no division (Dr. GRPO)
std is the unbiased sample std (torch.std), and eps is added to it, as TRL does. A group whose rewards are all
equal gets advantages of exactly 0 (the GRPO trainer skips its forward and backward: skip_zero_advantage).

Dynamic sampling (DAPO): a group whose rewards are all equal has zero advantages and teaches nothing, so it is
dropped and more prompts are sampled until the batch is full again (`fill_informative_groups`).
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

SCALE_REWARDS = ("group", "batch", "none")
G_ = TypeVar("G_")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """rewards [N * G] (grouped contiguously) -> advantages [N * G]."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {scale_rewards!r} is not one of {list(SCALE_REWARDS)}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)                                  # [N, G]
    # a group whose rewards are all equal gets exactly 0 (its mean can round: 8 x 0.2 in fp32 leaves ~1e-8, which
    # the group std's eps would blow up to ~1e-4)
    adv = (r - r.mean(dim=1, keepdim=True)).masked_fill(~informative_groups(rewards, group_size)[:, None], 0.0)
    if scale_rewards == "group":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    elif scale_rewards == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros(())
        adv = adv / (std + eps)
    return adv.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int, tol: float = 0.0) -> torch.Tensor:
    """rewards [N * G] -> bool [N]: True for groups whose rewards are not all equal (max - min > tol), compared in
    float64 (as the trainer's Python-float rewards are: dynamic sampling and the logged zero-std fraction agree)."""
    r = rewards.double().view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) > tol


def fill_informative_groups(draw: Callable[[int], Sequence[G_]], num_groups: int,
                            is_informative: Callable[[G_], bool], max_draws: int = 4) -> tuple[list[G_], int]:
    """Dynamic sampling: call `draw(k)` for k more groups, keep the informative ones, until `num_groups` are kept.

    After `max_draws` calls the batch is topped up with the non-informative groups already drawn (so a step always
    has data). Returns (groups, number of draw calls).
    """
    kept: list[G_] = []
    spare: list[G_] = []
    calls = 0
    while len(kept) < num_groups and calls < max_draws:
        calls += 1
        for g in draw(num_groups - len(kept)):
            (kept if is_informative(g) else spare).append(g)
    kept = kept[:num_groups]
    if len(kept) < num_groups:
        kept += spare[: num_groups - len(kept)]
    return kept, calls
