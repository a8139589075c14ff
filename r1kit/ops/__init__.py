"""The compute ops the models call, each with a torch reference and optional faster backends.

    linear(x, weight, bias)                                  r1kit/ops/linear.py
    rms_norm(x, weight, eps)                                 r1kit/ops/norm.py
    rope(x, cos, sin, interleave)                            r1kit/ops/rope.py
    route(scores, bias, k, groups, topk_groups, norm, scale) r1kit/ops/router.py     DeepSeek-V3 expert choice
    routed_swiglu(x, idx, w, gate_up, down)                  r1kit/ops/experts.py    the routed experts
    attend(q, k, v, mask, scale), Padding, SharedPrefix      r1kit/ops/attention.py  training / reference path
    mla_paged_attention, gqa_paged_attention                 r1kit/ops/paged_attention.py  engine path
    frozen_weights()                                         r1kit/ops/frozen.py     weights that hold still

Which implementation runs is decided in one place, r1kit/ops/dispatch.py, from the device, the dtypes, whether
gradients are needed and the shapes; model code calls these functions and has no device branches. Backends:
"torch" (the reference, every device) and "cpu" (C kernels, r1kit/ops/cpu).
"""
from r1kit.ops import cpu  # noqa: F401  (registers the cpu backend)
from r1kit.ops.attention import Padding, SharedPrefix, attend
from r1kit.ops.dispatch import trace, use_backend
from r1kit.ops.experts import routed_swiglu
from r1kit.ops.frozen import frozen_weights
from r1kit.ops.linear import linear
from r1kit.ops.norm import rms_norm
from r1kit.ops.paged_attention import gqa_paged_attention, mla_paged_attention
from r1kit.ops.rope import rope
from r1kit.ops.router import route

__all__ = ["Padding", "SharedPrefix", "attend", "frozen_weights", "gqa_paged_attention", "linear",
           "mla_paged_attention", "rms_norm", "rope", "route", "routed_swiglu", "trace", "use_backend"]
