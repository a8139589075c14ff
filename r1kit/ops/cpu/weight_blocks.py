"""Column-blocked copies of the weights for decode on CPU, inside a frozen-weights scope (r1kit/ops/frozen.py).

A decode step reads every weight once for a few dozen rows. In their training layout ([out, in] rows) the linears
go through MKL at about half its large-matrix rate, slower again once the step's expert weights and KV cache have
evicted them, and the routed experts' C kernel spends much of its time summing vector lanes. A transposed copy in
column blocks ([..., ceil(O/32), In, 32]: block j holds outputs 32j..32j+31, input-major, the last zero-padded) is
streamed front to back by a register-blocked product (csrc/dots.h's gemm): at 64 rows the experts run 1.9x and the
linears 1.7x faster (docs/benchmarks.md). The copies are made on first use inside the scope (one pass over the
weights, 20-45 ms a GRPO rollout for the small preset) and dropped with it.

Used by the cpu backend's `linear` and `routed_swiglu` (backend.py).
"""
from __future__ import annotations

import torch

from r1kit.ops import frozen
from r1kit.ops.cpu import kernels

MAX_BYTES = 2 << 30  # beyond this (a large model on CPU), a scope keeps the unblocked kernels


def _nbytes(weight: torch.Tensor) -> int:
    """bytes of weight's blocked copy (its output dim padded to a multiple of 32)"""
    o = weight.shape[-2]
    return weight.numel() // max(o, 1) * (o + -o % 32) * 4


def _copy(scope: frozen.WeightCopies, weight: torch.Tensor) -> torch.Tensor | None:
    """The blocked copy of weight [..., O, In] -> [..., ceil(O/32), In, 32], cached in the scope; None when it would
    pass MAX_BYTES."""
    hit = scope.get(weight)
    if hit is not None:
        return hit
    if scope.nbytes + _nbytes(weight) > MAX_BYTES:
        return None
    *lead, o, i = weight.shape
    w = weight.detach()
    if o % 32:
        w = torch.cat([w, w.new_zeros(*lead, 32 - o % 32, i)], dim=-2)
    return scope.put(weight, w.view(*lead, -1, 32, i).transpose(-1, -2).contiguous())


def expert_blocks(gate_up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The blocked copies of the routed experts' gate_up [E, 2I, D] and down [E, D, I] inside a scope, for
    kernels.routed_swiglu; None outside one, for shapes the blocked kernel does not take (2I and D multiples of 32,
    fp32 weights), and when both copies do not fit (one alone is of no use)."""
    scope = frozen.current()
    if (scope is None or gate_up.shape[1] % 32 or gate_up.shape[2] % 32 or gate_up.dtype != torch.float32
            or down.dtype != torch.float32):
        return None
    missing = sum(_nbytes(t) for t in (gate_up, down) if scope.get(t) is None)
    if scope.nbytes + missing > MAX_BYTES:
        return None
    gu, dn = _copy(scope, gate_up), _copy(scope, down)
    return None if gu is None or dn is None else (gu, dn)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """F.linear(x, weight) (no bias) inside a scope, through csrc/blocked_linear.c over the weight's blocked copy:
    CPU fp32, no autograd, no autocast. None outside a scope or for inputs it does not take."""
    scope = frozen.current()
    if scope is None or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or x.numel() == 0:
        return None
    if (kernels.usable(x, weight) is None or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or torch.is_autocast_enabled("cpu")):
        return None
    copy = _copy(scope, weight)
    return None if copy is None else kernels.linear_over_blocks(x, copy, weight.shape[0])
