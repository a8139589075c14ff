"""Column-blocked copies of the weights for GRPO rollouts on CPU: a scope over which the weights hold still.

A decode step reads every weight once for a few dozen rows. In their training layout ([out, in] rows) the linears
go through MKL at about half its large-matrix rate, slower again once the step's expert weights and KV cache have
evicted them, and the routed experts' C kernel spends much of its time summing vector lanes. A transposed copy in
column blocks ([..., ceil(O/32), In, 32]: block j holds outputs 32j..32j+31, input-major, the last zero-padded) is
streamed front to back by a register-blocked product (csrc/dots.h's gemm): at 64 rows the experts run 1.9x and the
linears 1.7x faster (docs/benchmarks.md).

Copies cost memory and go stale when the weights change, so they exist only inside `scope()`, which the caller opens
when the weights hold still: `EngineRollout.generate` opens one around each rollout, so the copies are made once per
rollout (one pass over the weights) and dropped before training. A scope belongs to the thread that opens it: an
engine serving from another thread of the process never sees it. (Why not a cache keyed on tensor version counters:
fused AdamW updates parameters without bumping `_version`.)

Used by `r1kit.models.layers.Linear` (`linear`) and `grouped_experts.routed_swiglu` (`expert_blocks`).
"""
from __future__ import annotations

import contextlib
import threading

import torch

from r1kit.models import native

MAX_BYTES = 2 << 30  # beyond this (a large model on CPU), a scope keeps the unblocked kernels
_SCOPE = threading.local()


class _Blocks:
    """The copies of one open scope: {id(weight): (weight, copy)} (holding weight keeps its id from being reused)."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.nbytes = 0


def current() -> _Blocks | None:
    """This thread's open scope, if any."""
    return getattr(_SCOPE, "blocks", None)


@contextlib.contextmanager
def scope():
    """Inside, the decode kernels keep a blocked copy of each fp32 weight they read (made on first use) and run over
    it; the copies are dropped on exit. A weight changed inside the scope (in place, or through .data) is not seen.
    Scopes nest (the outermost owns the copies)."""
    if current() is not None:
        yield
        return
    _SCOPE.blocks = _Blocks()
    try:
        yield
    finally:
        _SCOPE.blocks = None


def _nbytes(weight: torch.Tensor) -> int:
    """bytes of weight's blocked copy (its output dim padded to a multiple of 32)"""
    o = weight.shape[-2]
    return weight.numel() // max(o, 1) * (o + -o % 32) * 4


def _copy(blocks: _Blocks, weight: torch.Tensor) -> torch.Tensor | None:
    """The blocked copy of weight [..., O, In] -> [..., ceil(O/32), In, 32], cached in the scope; None when it would
    pass MAX_BYTES."""
    hit = blocks.copies.get(id(weight))
    if hit is not None and hit[0] is weight:
        return hit[1]
    if blocks.nbytes + _nbytes(weight) > MAX_BYTES:
        return None
    *lead, o, i = weight.shape
    w = weight.detach()
    if o % 32:
        w = torch.cat([w, w.new_zeros(*lead, 32 - o % 32, i)], dim=-2)
    copy = w.view(*lead, -1, 32, i).transpose(-1, -2).contiguous()
    blocks.copies[id(weight)] = (weight, copy)
    blocks.nbytes += copy.numel() * 4
    return copy


def expert_blocks(gate_up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The blocked copies of the routed experts' gate_up [E, 2I, D] and down [E, D, I] inside a scope, for
    native.routed_swiglu; None outside one, for shapes the blocked kernel does not take (2I and D multiples of 32,
    fp32 weights), and when both copies do not fit (one alone is of no use)."""
    blocks = current()
    if (blocks is None or gate_up.shape[1] % 32 or gate_up.shape[2] % 32 or gate_up.dtype != torch.float32
            or down.dtype != torch.float32):
        return None
    missing = sum(_nbytes(t) for t in (gate_up, down) if id(t) not in blocks.copies)
    if blocks.nbytes + missing > MAX_BYTES:
        return None
    gu, dn = _copy(blocks, gate_up), _copy(blocks, down)
    return None if gu is None or dn is None else (gu, dn)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """F.linear(x, weight) (no bias) inside a scope, through csrc/blocked_linear.c over the weight's blocked copy:
    CPU fp32, no autograd, no autocast. None outside a scope or for inputs it does not take."""
    blocks = current()
    if blocks is None or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or x.numel() == 0:
        return None
    if (native._usable(x, weight) is None or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or torch.is_autocast_enabled("cpu")):
        return None
    copy = _copy(blocks, weight)
    return None if copy is None else native.linear_over_blocks(x, copy, weight.shape[0])
