"""linear: y = x W^T + b, the projections of every layer (r1kit.models.layers.Linear)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from r1kit.ops import dispatch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., In], weight [Out, In], bias [Out] or None -> [..., Out] (F.linear's contract, autocast included)."""
    return dispatch.call("linear", x, weight, bias)


@dispatch.register("linear", "torch")
def _reference(x, weight, bias):
    return F.linear(x, weight, bias)
