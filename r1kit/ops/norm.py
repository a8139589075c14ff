"""rms_norm: x / sqrt(mean(x^2) + eps) * weight over the last dim, with transformers' numerics."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from r1kit.ops import dispatch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., d], weight [d] -> [..., d]. Differentiable in both. fp32 is one fused op; other dtypes normalise in
    fp32 and scale in the input dtype (as transformers' RMSNorm does)."""
    return dispatch.call("rms_norm", x, weight, eps)


@dispatch.register("rms_norm", "torch")
def _reference(x, weight, eps):
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
