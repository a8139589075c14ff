"""The CPU backend's training kernels: differentiable RMSNorm, shared-prefix attention and the routed experts' glue.

- RMSNorm (csrc/decode_small_ops.c): one pass forward and one backward, where torch's composite CPU version runs
  ~15 elementwise calls (2.7 ms for a [2216, 256] forward and backward).
- Shared-prefix attention (csrc/shared_prefix_attention.c, forward and backward): GRPO's packed rows
  (r1kit/ops/attention.py, SharedPrefix) need a mask torch's CPU flash kernel can only take as an explicit tensor
  over copied keys; the kernel reads the row as it is.
- The routed experts' training glue (csrc/moe_train.c): the sorts, gathers, activation and sums around the
  per-expert matmuls of r1kit/ops/experts.py's grouped formulation, one threaded pass each.
The C backwards build no graph: they are once_differentiable, so a double backward raises instead of being wrong.
"""
from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from r1kit.ops.cpu import kernels, library
from r1kit.ops.cpu.kernels import norm_rows, usable


# -- RMSNorm ------------------------------------------------------------------------------------------------------
class _RMSNormFunction(torch.autograd.Function):
    """Differentiable RMSNorm through rms_norm_fwd_f32 / rms_norm_bwd_f32 (x: [n, d] rows x_stride apart)."""

    @staticmethod
    def forward(ctx, x, weight, rows, stride, eps, lib):
        n, d = rows.shape[0], weight.shape[0]
        out, rstd = x.new_empty(x.shape), x.new_empty(n)
        lib.rms_norm_fwd_f32(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), rstd.data_ptr(), n, d, stride, eps)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.stride, ctx.lib, ctx.x_shape = stride, lib, x.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, weight, rstd = ctx.saved_tensors
        n, d = rows.shape[0], weight.shape[0]
        g = grad.contiguous()
        dx, dw = g.new_empty(n, d), torch.empty_like(weight)
        threads = torch.get_num_threads()
        work = g.new_empty(threads * d)
        ctx.lib.rms_norm_bwd_f32(rows.data_ptr(), weight.data_ptr(), rstd.data_ptr(), g.data_ptr(), dx.data_ptr(),
                                 dw.data_ptr(), work.data_ptr(), n, d, ctx.stride, threads)
        return dx.view(ctx.x_shape), dw, None, None, None, None


def rms_norm_train(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """Differentiable F.rms_norm(x, weight) for CPU fp32 (x's rows may be strided, as in kernels.rms_norm). None
    when the kernel cannot take them."""
    got = norm_rows(x, weight)
    if got is None:
        return None
    lib, rows, stride = got
    return _RMSNormFunction.apply(x, weight, rows, stride, eps, lib)


# -- shared-prefix attention --------------------------------------------------------------------------------------
def _bht(t: torch.Tensor):
    """(batch, head, token) strides of a [B, H, L, d] tensor, for csrc/shared_prefix_attention.c"""
    return (ctypes.c_int64 * 3)(*t.stride()[:3])


class _SharedPrefixAttention(torch.autograd.Function):
    """Differentiable shared-prefix attention through sp_attention_fwd / sp_attention_bwd. The output and the
    gradients are [B, L, H, d] tensors seen as [B, H, L, d], the layout the projections around attention use."""

    @staticmethod
    def forward(ctx, q, k, v, valid, shape, scale, lib):
        (b, h, length, d), dv, (p, g, c) = q.shape, v.shape[-1], shape
        out, lse = q.new_empty(b, length, h, dv).transpose(1, 2), q.new_empty(b, h, length)
        if lib.sp_attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), valid.data_ptr(), out.data_ptr(),
                                lse.data_ptr(), b, h, p, g, c, d, dv, _bht(q), _bht(k), _bht(v), _bht(out), scale,
                                torch.get_num_threads()):
            raise MemoryError("native shared-prefix attention: out of memory")
        ctx.save_for_backward(q, k, v, valid, out, lse)
        ctx.shape, ctx.scale, ctx.lib = shape, scale, lib
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        q, k, v, valid, out, lse = ctx.saved_tensors
        (b, h, length, d), dv, (p, g, c) = q.shape, v.shape[-1], ctx.shape
        go = go if go.stride(-1) == 1 else go.contiguous()
        dq, dk = (q.new_empty(b, length, h, d).transpose(1, 2) for _ in range(2))
        d_v = q.new_empty(b, length, h, dv).transpose(1, 2)
        if ctx.lib.sp_attention_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), valid.data_ptr(), out.data_ptr(),
                                    lse.data_ptr(), go.data_ptr(), dq.data_ptr(), dk.data_ptr(), d_v.data_ptr(), b, h,
                                    p, g, c, d, dv, _bht(q), _bht(k), _bht(v), _bht(out), _bht(go), _bht(dq),
                                    _bht(dk), _bht(d_v), ctx.scale, torch.get_num_threads()):
            raise MemoryError("native shared-prefix attention: out of memory")
        return dq, dk, d_v, None, None, None, None


def shared_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                            shape: tuple[int, int, int], scale: float) -> torch.Tensor | None:
    """Differentiable attention over shared-prefix rows (layout and masks: r1kit/ops/attention.py, SharedPrefix):
    q/k [B, H, L, d], v [B, H, L, dv] (any strides with a contiguous last dim), valid [B, P] uint8, shape (P, G, C)
    -> [B, H, L, dv]. None when the kernel cannot take them (not CPU fp32, head dims not multiples of 16, k/v with
    other head counts than q). Each thread holds the scores of one prompt or completion, max(P, C) x (P + C) floats
    (twice in the backward): flash attention's memory is O(block), but at these sizes the reference's explicit mask
    is larger. MemoryError when that cannot be allocated."""
    lib = usable(q, k, v)
    p, g, c = shape
    if (lib is None or q.dim() != 4 or v.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]
            or min(p, g, c) < 0 or q.shape[2] != p + g * c or q.shape[-1] < 16 or v.shape[-1] < 16
            or q.shape[-1] % 16 or v.shape[-1] % 16 or any(t.stride(-1) != 1 for t in (q, k, v))
            or valid.dtype != torch.uint8 or valid.device.type != "cpu" or not valid.is_contiguous()
            or valid.shape != (q.shape[0], p)):
        return None
    return _SharedPrefixAttention.apply(q, k, v, valid, shape, scale, lib)


# -- the routed experts' training glue (csrc/moe_train.c) -----------------------------------------------------------
# expert_order decides whether the glue runs (None: the torch glue does); the others take what it laid out: CPU fp32
# tensors made by the experts' forward and backward, which they trust to be contiguous.

def expert_order(flat: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor, list[int]] | None:
    """Stable counting sort of the expert ids flat [M] (CPU) -> (order [M]: the pair of each sorted row, inverse [M]:
    the sorted row of each pair, rows of each of the e experts). None when the library is unavailable or flat is not
    a plain 1-D CPU tensor. ValueError for ids outside [0, e)."""
    lib = library.load()
    if lib is None or flat.device.type != "cpu" or flat.dim() != 1 or type(flat) not in kernels.PLAIN:
        return None
    flat = flat.to(torch.int64).contiguous()
    order, inverse, counts = torch.empty_like(flat), torch.empty_like(flat), flat.new_empty(e)
    if lib.expert_order(flat.data_ptr(), flat.numel(), e, order.data_ptr(), inverse.data_ptr(), counts.data_ptr()):
        raise ValueError(f"expert ids outside [0, {e})")
    return order, inverse, counts.tolist()


class NativeGlue:
    """The glue of r1kit.ops.experts' grouped formulation in C (CPU fp32, no alignment), with the expert order from
    a counting sort: one threaded pass each where the torch glue sorts, gathers single-threaded, and makes three
    elementwise passes over strided halves (3-4% faster experts forward + backward at GRPO training size; the glue is
    memory-bound). order [M]: the (token, slot) pair of each sorted row; inverse [N*K]: the sorted row of each
    pair."""

    def __init__(self, order: torch.Tensor, inverse: torch.Tensor, k: int, n: int):
        self.order, self.inverse, self.k, self.n = order, inverse, k, n

    @classmethod
    def layout(cls, x: torch.Tensor, w: torch.Tensor, flat: torch.Tensor, counts_t: torch.Tensor, e: int, k: int):
        """(glue, rows of each expert) for fp32 CPU x and w (see r1kit.ops.experts.grouped), else None."""
        if usable(x, w) is None:
            return None
        got = expert_order(flat, e)
        if got is None:
            return None
        order, inverse, counts = got
        return cls(order, inverse, k, x.shape[0]), counts

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[N, C] token rows -> [M, C] rows t[order // k]."""
        src = t.contiguous()
        out = src.new_empty(self.order.numel(), src.shape[1])
        library.load().gather_rows_f32(src.data_ptr(), self.order.data_ptr(), self.k, out.data_ptr(),
                                       self.order.numel(), src.shape[1], torch.get_num_threads())
        return out

    def activation(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """h [M, 2I] (gate | up), w [N*K] routing weights -> silu(gate) * up * w[order] [M, I]."""
        m, i = h.shape[0], h.shape[1] // 2
        out = h.new_empty(m, i)
        library.load().swiglu_fwd_f32(h.data_ptr(), w.contiguous().data_ptr(), self.order.data_ptr(),
                                      out.data_ptr(), m, i, torch.get_num_threads())
        return out

    def activation_backward(self, h: torch.Tensor, w: torch.Tensor, d_act_w: torch.Tensor, need_dw: bool):
        """The gradients of `activation` from d_act_w [M, I]: (d_h [M, 2I], d_w [N*K])."""
        m, i = h.shape[0], h.shape[1] // 2
        d_h, d_w, w = torch.empty_like(h), w.new_empty(w.numel()), w.contiguous()
        library.load().swiglu_bwd_f32(h.data_ptr(), w.data_ptr(), self.order.data_ptr(),
                                      d_act_w.contiguous().data_ptr(), d_h.data_ptr(), d_w.data_ptr(), m, i,
                                      torch.get_num_threads())
        return d_h, d_w.view(w.shape)

    def token_sums(self, rows: torch.Tensor) -> torch.Tensor:
        """[N, D] sums of each token's k rows of rows [N*K, D] (sorted by expert)."""
        out = rows.new_empty(self.n, rows.shape[1])
        library.load().token_sums_f32(rows.data_ptr(), self.inverse.data_ptr(), out.data_ptr(), self.n, self.k,
                                      rows.shape[1], torch.get_num_threads())
        return out
