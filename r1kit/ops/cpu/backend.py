"""The cpu backend: which op calls the C kernels take, registered with r1kit/ops/dispatch.py.

Each implementation takes a call (returns its result) or declines it (None: the torch reference runs). Besides the
kernels' own input checks (CPU fp32 tensors; bf16 weights and caches where a kernel reads them), what decides:

    op                        cpu backend takes                                  kernel
    linear                    no autograd, inside frozen_weights()               blocked_linear.c (weight_blocks)
    rms_norm                  fp32; differentiable when grad mode is on          decode_small_ops.c
    rope                      no grad mode, the engine's flat layout             decode_small_ops.c
    route                     fp32 scores, up to 1,024 experts                   decode_small_ops.c
    routed_swiglu             decode: no gradients, <= NATIVE_MAX_ROWS_PER_EXPERT routed_swiglu.c
                              else fp32: the grouped formulation with C glue     moe_train.c
    attention                 (none: torch's SDPA)
    shared_prefix_attention   fp32 (or upcast under CPU autocast), head dims % 16 shared_prefix_attention.c
    mla_decode, gqa_decode    fp32 or bf16 cache                                 paged_decode.c
"""
from __future__ import annotations

import torch

from r1kit.ops import dispatch, experts, router
from r1kit.ops.cpu import kernels, library, train_kernels, weight_blocks

# The C decode kernel runs (without gradients) while the experts average at most this many rows: beyond that,
# MKL's matmuls on an expert's contiguous rows use its weights better. Measured on a 2-core CPU against the torch
# reference: 64 experts of width 64 (the small preset): 1.1-1.9x faster up to 32 rows (1.4x at 64, 0.8x at 256);
# 16 experts of width 256: 1.7x at 4 rows, on par at 16-32, 0.8x from 128.
NATIVE_MAX_ROWS_PER_EXPERT = 32


def _unavailable() -> str | None:
    return None if library.load() is not None else library.failure


dispatch.register_backend("cpu", _unavailable)


@dispatch.register("linear", "cpu")
def linear(x, weight, bias):
    out = weight_blocks.linear(x, weight)
    return out if out is None or bias is None else out.add_(bias)


@dispatch.register("rms_norm", "cpu")
def rms_norm(x, weight, eps):
    if torch.is_grad_enabled():
        return train_kernels.rms_norm_train(x, weight, eps)
    return kernels.rms_norm(x, weight, eps)


@dispatch.register("rope", "cpu")
def rope(x, cos, sin, interleave):
    return None if torch.is_grad_enabled() else kernels.rope(x, cos, sin, interleave)


@dispatch.register("route", "cpu")
def route(scores, bias, k, groups, topk_groups, norm, scaling):
    """The C selection in inference and training alike (exact ties go to the lowest expert id, where torch.topk
    orders them its own way), so a rollout and the training forward over the same weights pick the same experts;
    with gradients the weights are then gathered from the scores."""
    chosen = kernels.router_select(scores.detach(), bias, k, groups, topk_groups, norm, scaling)
    if chosen is None or not (torch.is_grad_enabled() and scores.requires_grad):
        return chosen
    return chosen[0], router.gather_weights(scores, chosen[0], norm, scaling)


@dispatch.register("routed_swiglu", "cpu")
def routed_swiglu(x, idx, w, gate_up, down, grad):
    n, k = idx.shape
    if not grad and n * k <= NATIVE_MAX_ROWS_PER_EXPERT * gate_up.shape[0]:
        out = kernels.routed_swiglu(x, idx, w, gate_up, down, weight_blocks.expert_blocks(gate_up, down))
        if out is not None:
            return out
    if kernels.usable(x, w) is None:
        return None
    return experts.reference(x, idx, w, gate_up, down, grad, train_kernels.NativeGlue.layout)


@dispatch.register("shared_prefix_attention", "cpu")
def shared_prefix_attention(q, k, v, layout, scale):
    if torch.is_autocast_enabled("cpu"):  # the fp32 kernel on upcast inputs (as the reference's SDPA does)
        q, k, v = q.float(), k.float(), v.float()
    valid = layout.prefix_valid_u8
    shape = (layout.prefix_len, layout.group_size, layout.completion_len)
    return train_kernels.shared_prefix_attention(q, k, v, valid, shape, scale)


@dispatch.register("mla_decode", "cpu")
def mla_decode(q, cache, plan, r, scale):
    return kernels.mla_decode(q, cache, plan.tables, plan.lens, r, scale)  # in place through the block tables


@dispatch.register("gqa_decode", "cpu")
def gqa_decode(q, cache, plan, scale):
    return kernels.gqa_decode(q, cache, plan.tables, plan.lens, scale)
