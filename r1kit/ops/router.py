"""route: DeepSeek-V3's expert selection (group-limited top-k over biased sigmoid scores).

    choice = scores + bias                           the bias only chooses (aux-loss-free balancing)
    group score = sum of the top-2 choices in each of `groups` groups; keep the best `topk_groups` groups
    idx = the k best choices within the kept groups
    w = scores[idx] (unbiased), normalised to sum 1 when `norm`, times `scaling`

(docs/architecture.md, "MoE routing").
"""
from __future__ import annotations

import torch

from r1kit.ops import dispatch


def route(scores: torch.Tensor, bias: torch.Tensor, k: int, groups: int, topk_groups: int, norm: bool,
          scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [N, E] fp32 sigmoid scores, bias [E] -> expert ids [N, k], weights [N, k] (fp32). The weights are
    differentiable in scores; the choice is not. Which of exactly tied experts is chosen is up to the backend (the
    cpu backend takes the lowest ids, in training and inference alike)."""
    return dispatch.call("route", scores, bias, k, groups, topk_groups, norm, scaling)


def gather_weights(scores: torch.Tensor, idx: torch.Tensor, norm: bool, scaling: float) -> torch.Tensor:
    """The routing weights of the chosen experts idx [N, k], differentiably from scores [N, E]."""
    w = scores.gather(1, idx)
    if norm:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * scaling


@dispatch.register("route", "torch")
def _reference(scores, bias, k, groups, topk_groups, norm, scaling):
    e = scores.shape[-1]
    choice = scores + bias
    if topk_groups < groups:
        grouped = choice.view(-1, groups, e // groups)  # [N, G, E/G]
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # [N, G]
        keep = torch.topk(group_scores, k=topk_groups, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, keep, 1).bool()  # [N, G]
        choice = grouped.masked_fill(~group_mask[..., None], float("-inf")).view(-1, e)
    idx = torch.topk(choice, k=k, dim=-1, sorted=False)[1]  # [N, k]
    return idx, gather_weights(scores, idx, norm, scaling)
