"""Grouped SwiGLU experts: the compute kernel of DeepSeekMoE, forward and backward written out by hand.

Input rows arrive sorted by expert (`counts[e]` consecutive rows for expert e). Each expert is two matmuls on its
contiguous slice, written straight into preallocated outputs; the activation runs once over all rows. The backward
does the same and writes each expert's weight gradient into its slot of one stacked gradient tensor. Compared with
plain autograd over a Python loop of per-expert `F.linear` calls, this avoids a torch.cat of the outputs, a stack of
per-expert weight gradients and ~10 autograd nodes per expert -- most of the MoE layer's cost on CPU.

    grouped_swiglu(xs [M, D], gate_up [E, 2I, D], down [E, D, I], weights [M], counts: list[int]) -> [M, D]
    with rows r of expert e:  out[r] = weights[r] * down[e] @ (silu(gate_up[e, :I] @ xs[r]) * (gate_up[e, I:] @ xs[r]))
The routing weight is applied to the [M, I] activation rather than the [M, D] output: the same product, less memory
traffic (I < D for fine-grained experts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _slices(counts: list[int]):
    start = 0
    for e, c in enumerate(counts):
        if c:
            yield e, slice(start, start + c)
        start += c


class _GroupedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, gate_up, down, weights, counts):
        i = down.shape[2]
        h = xs.new_empty(xs.shape[0], 2 * i)  # [M, 2I] gate and up pre-activations
        for e, s in _slices(counts):
            torch.mm(xs[s], gate_up[e].t(), out=h[s])
        gate, up = h[:, :i], h[:, i:]
        act = F.silu(gate) * up  # [M, I]
        act_w = act * weights[:, None]  # routing weight applied on the narrow side (I < D)
        out = xs.new_empty(xs.shape[0], down.shape[1])  # [M, D]
        for e, s in _slices(counts):
            torch.mm(act_w[s], down[e].t(), out=out[s])
        ctx.counts = counts
        ctx.save_for_backward(xs, gate_up, down, weights, h, act, act_w)
        return out

    @staticmethod
    def backward(ctx, d_out):
        xs, gate_up, down, weights, h, act, act_w = ctx.saved_tensors
        counts, i = ctx.counts, down.shape[2]
        d_out = d_out.contiguous()
        d_act_w = torch.empty_like(act)  # [M, I]
        d_down = torch.zeros_like(down) if ctx.needs_input_grad[2] else None
        for e, s in _slices(counts):
            torch.mm(d_out[s], down[e], out=d_act_w[s])
            if d_down is not None:
                torch.mm(d_out[s].t(), act_w[s], out=d_down[e])
        d_weights = (d_act_w * act).sum(-1) if ctx.needs_input_grad[3] else None
        d_act = d_act_w.mul_(weights[:, None])
        gate, up = h[:, :i], h[:, i:]
        sig = torch.sigmoid(gate)
        d_h = torch.empty_like(h)  # [M, 2I]
        torch.mul(d_act, gate * sig, out=d_h[:, i:])  # d up = d_act * silu(gate)
        torch.mul(d_act * up, sig * (1 + gate * (1 - sig)), out=d_h[:, :i])  # d gate = d_act * up * silu'(gate)
        d_xs = torch.empty_like(xs) if ctx.needs_input_grad[0] else None
        d_gate_up = torch.zeros_like(gate_up) if ctx.needs_input_grad[1] else None
        for e, s in _slices(counts):
            if d_xs is not None:
                torch.mm(d_h[s], gate_up[e], out=d_xs[s])
            if d_gate_up is not None:
                torch.mm(d_h[s].t(), xs[s], out=d_gate_up[e])
        return d_xs, d_gate_up, d_down, d_weights, None


def grouped_swiglu(xs: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                   counts: list[int]) -> torch.Tensor:
    """See the module docstring; row r's output is scaled by weights[r]. Differentiable in all tensors."""
    if sum(counts) != xs.shape[0]:
        raise ValueError(f"counts cover {sum(counts)} rows but xs has {xs.shape[0]}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (xs, gate_up, down, weights)):
        return _GroupedSwiGLU.apply(xs, gate_up, down, weights, counts)
    with torch.no_grad():
        return _GroupedSwiGLU.forward(_NoCtx(), xs, gate_up, down, weights, counts)


class _NoCtx:
    """Stand-in for the autograd context when nothing needs gradients (inference)."""

    def save_for_backward(self, *tensors):
        pass
