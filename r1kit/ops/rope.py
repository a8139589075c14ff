"""rope: rotary position embedding applied to queries or keys, in the two layouts of the checkpoints.

    interleave=False (Llama/Qwen):       rotate the halves (x[:d/2], x[d/2:])
    interleave=True  (DeepSeek weights): rotate the pairs (x[0::2], x[1::2]); the result is written in the half
                                         layout, which changes nothing since q and k get the same one.

cos/sin come from r1kit.models.layers.RotaryEmbedding (fp32, scaled by the rope attention factor).
"""
from __future__ import annotations

import torch

from r1kit.ops import dispatch


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """x [..., d], cos/sin broadcastable to [..., d/2] -> roped x [..., d] (half layout). Differentiable."""
    return dispatch.call("rope", x, cos, sin, interleave)


@dispatch.register("rope", "torch")
def _reference(x, cos, sin, interleave):
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
