"""routed_swiglu: the routed SwiGLU experts of DeepSeekMoE, forward and backward written out by hand.

    routed_swiglu(x [N, D], idx [N, K], w [N, K], gate_up [E, 2I, D], down [E, D, I]) -> [N, D]
    out[n] = sum_k w[n, k] * down[e] @ (silu(gate_up[e, :I] @ x[n]) * (gate_up[e, I:] @ x[n])),  e = idx[n, k]

The torch reference has two formulations:
- grouped (training, prefill): the N*K (token, slot) rows are sorted by expert, so each expert is two matmuls on a
  contiguous slice written straight into preallocated outputs, and the activation runs once over all rows. The
  permutation lives inside the autograd function, so each direction is one gather (x's rows by `order // K`; the
  output gradient's in the backward), one activation pass and one sum of each token's K rows: the "glue", here as
  torch ops (`TorchGlue`, any device and dtype; a backend may supply its own, as the cpu backend does in C).
  silu(gate) is recomputed in the backward rather than saved. Weight gradients are written expert by expert into
  uninitialised stacked tensors (only experts without rows are zeroed). Compared with plain autograd over a Python
  loop of per-expert `F.linear` calls this avoids ~10 autograd nodes per expert, a cat and a stack; compared with
  autograd's `x[token]` it avoids the slow accumulating index_put_.
- padded (decode-sized batches without gradients): with a handful of rows per expert a per-expert matmul costs
  more in call and threading overhead than in FLOPs, so the rows are copied into [E, cap, D] (cap = the most rows
  any expert has, zero padding) and each projection is one torch.bmm over the stacked weights.
The routing weight is applied to the [rows, I] activation rather than the [rows, D] output: the same product, less
memory traffic (I < D for fine-grained experts). K outputs are summed in fp32 for half-precision inputs.
Under autocast both run in the autocast dtype (like F.linear would): x and the expert weights are cast on entry.
The cpu backend (r1kit/ops/cpu/backend.py) adds a C kernel for decode-sized batches without gradients (fp32 or bf16
weights, computed in fp32) and, for fp32, the C glue of the grouped formulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from r1kit.ops import dispatch


@dataclass(frozen=True)
class Tuning:
    """Which torch formulation runs, from measurements on one kind of device."""
    padded_max_rows: int  # no gradients: padded when no expert has more rows than this (0: never) ...
    padded_max_waste: float  # ... and the padded batch [E, cap] holds at most this many times the real rows
    half_row_align: int = 1  # grouped, bf16/fp16: each expert's rows padded to a multiple of this


# The thresholds belong to the device they were measured on (r1kit/ops/dispatch.py); a device's backend adds its
# entry. CPU, measured on 2 cores (bench/moe_decode.py): with two threads a per-expert mm of a few rows costs more in
# threading and call overhead than in FLOPs, and with mostly-empty experts the padded bmm would compute and read
# weights for nothing. bf16/fp16 matmuls on CPU go through oneDNN, which JIT-builds a kernel for every new (M, K, N)
# and caches it: with each expert's row count new at every step, that costs ~50-250 us per matmul (1.9x slower than
# fp32 overall in a GRPO training phase); padding each expert's rows to a multiple of 32 keeps the shapes few.
TUNING: dict[str, Tuning] = {"cpu": Tuning(padded_max_rows=64, padded_max_waste=4, half_row_align=32)}
# Devices without an entry: nothing measured. Decode-sized batches keep the padded formulation with the CPU's row
# limits (on a GPU a per-expert loop costs kernel launches instead of threading overhead) until a measurement there
# gives the device its own entry.
UNMEASURED = Tuning(padded_max_rows=64, padded_max_waste=4)


def _runs(counts: list[int], *tensors: torch.Tensor):
    """(e, each tensor's part for expert e) for every expert with rows: 2-D row tensors [M, C] are split into runs
    of counts[e] rows, 3-D stacked weights [E, A, B] give their entry e. One split/unbind call per tensor rather than
    per-expert indexing (64 experts x 6 matmuls per layer: the cost of slicing in Python shows in a training step)."""
    parts = [t.unbind(0) if t.dim() == 3 else t.split(counts) for t in tensors]
    for e, c in enumerate(counts):
        if c:
            yield (e, *(p[e] for p in parts))


def _zero_missing(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Zero the gradient slots of experts that got no rows (the others are overwritten by matmuls)."""
    for e, c in enumerate(counts):
        if not c:
            t[e].zero_()
    return t


class TorchGlue:
    """The permutation and activation steps around the matmuls, as torch ops (any device and dtype), in the
    layout of `_aligned_layout` (each expert's rows padded to a multiple of `align`: bf16 on CPU)."""

    def __init__(self, order: torch.Tensor, counts: list[int], k: int, n: int, align: int):
        self.k, self.n = k, n
        self.order, self.counts, self.pos = _aligned_layout(order, counts, align, k)
        self.token = self.order // k  # [M] token of each laid-out row (N on alignment padding)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[N, C] token rows -> [M, C], one per laid-out row (contiguous runs per expert)."""
        src = _readable_by_padding(t, self.pos)
        # index_select(out=) into a fresh tensor: the functional form was 2x slower here (page faults)
        return torch.index_select(src, 0, self.token, out=src.new_empty(self.token.numel(), src.shape[1]))

    def activation(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[M, 2I] gate/up pre-activations, routing weights w [N*K] -> silu(gate) * up * w of each row [M, I]."""
        i = h.shape[1] // 2
        self.ws = _readable_by_padding(w, self.pos).index_select(0, self.order)  # [M], kept for the backward
        return F.silu(h[:, :i]).mul_(h[:, i:]).mul_(self.ws[:, None])

    def activation_backward(self, h: torch.Tensor, w: torch.Tensor, d_act_w: torch.Tensor, need_dw: bool):
        """-> (d_h [M, 2I], d_w [N*K] or None); silu(gate) is recomputed, not saved."""
        i = h.shape[1] // 2
        gate, up = h[:, :i], h[:, i:]
        silu_gate = F.silu(gate)
        d_w = None
        if need_dw:
            d_ws = torch.linalg.vecdot(d_act_w, silu_gate * up)  # [M]
            order = self.order
            if self.pos is not None:
                d_ws, order = d_ws.index_select(0, self.pos), order.index_select(0, self.pos)  # real rows only
            d_w = torch.empty_like(d_ws).index_copy_(0, order, d_ws)  # [N*K], back in (token, slot) order
        d_act = d_act_w.mul_(self.ws[:, None])  # (d_act_w is not needed after this)
        d_h = torch.empty_like(h)  # [M, 2I]
        torch.mul(d_act, silu_gate, out=d_h[:, i:])  # d up = d_act * silu(gate)
        d_h[:, :i] = torch.ops.aten.silu_backward(d_act.mul_(up), gate)  # d gate = d_act * up * silu'(gate)
        return d_h, d_w

    def token_sums(self, rows: torch.Tensor) -> torch.Tensor:
        """[M, D] laid-out rows -> [N, D] per-token sums (padding rows go to a dropped row N)."""
        return _sum_rows(rows, self.token, self.n if self.pos is None else self.n + 1)[:self.n]


def _aligned_layout(order: torch.Tensor, counts: list[int], align: int, k: int):
    """Sorted rows laid out with each expert's run padded to a multiple of `align`.

    Returns (order_p [Mp]: the (token, slot) pair of each laid-out row, N*K on padding; counts_p; pos [M]: the
    laid-out row of each sorted row, or None when align == 1 and nothing moves). Padding rows read the zero row
    appended after the N real tokens and are summed into a dropped row N (order_p // k == N there)."""
    if align == 1:
        return order, counts, None
    counts_p = [-(-c // align) * align for c in counts]
    dev = order.device
    ct, cp = torch.tensor(counts, device=dev), torch.tensor(counts_p, device=dev)
    offset = (cp.cumsum(0) - cp) - (ct.cumsum(0) - ct)  # [E] laid-out start minus sorted start of each expert
    sorted_e = torch.repeat_interleave(torch.arange(len(counts), device=dev), ct)  # [M] expert of each sorted row
    pos = torch.arange(order.numel(), device=dev) + offset[sorted_e]
    order_p = order.new_full((sum(counts_p),), order.numel()).index_copy_(0, pos, order)
    return order_p, counts_p, pos


def _readable_by_padding(t: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """t, with one zero row (or element) appended when the layout is aligned: what its padding rows read."""
    return t if pos is None else torch.cat([t, t.new_zeros(1, *t.shape[1:])])


class _RoutedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, gate_up, down, glue, counts):
        # x [N, D], w [N*K] routing weights (x's dtype); glue: the row layout sorted by expert and the steps that
        # move rows in and out of it; counts: rows of each expert in that layout
        xs = glue.gather(x)  # [M, D], contiguous runs per expert
        h = xs.new_empty(xs.shape[0], gate_up.shape[1])  # [M, 2I] gate and up pre-activations
        for _, xs_e, w_e, h_e in _runs(counts, xs, gate_up.transpose(1, 2), h):
            torch.mm(xs_e, w_e, out=h_e)
        act_w = glue.activation(h, w)  # [M, I]: routing weight applied on the narrow side (I < D)
        ys = xs.new_empty(xs.shape[0], down.shape[1])  # [M, D]
        for _, a_e, w_e, y_e in _runs(counts, act_w, down.transpose(1, 2), ys):
            torch.mm(a_e, w_e, out=y_e)
        ctx.glue, ctx.counts = glue, counts
        ctx.save_for_backward(xs, w, gate_up, down, h, act_w)
        return glue.token_sums(ys)

    @staticmethod
    @once_differentiable  # matmuls into preallocated outputs (and the C glue) build no graph for a double backward
    def backward(ctx, d_out):
        xs, w, gate_up, down, h, act_w = ctx.saved_tensors
        glue, counts = ctx.glue, ctx.counts
        d_ys = glue.gather(d_out.contiguous())  # [M, D]: a row feeds its token
        d_act_w = torch.empty_like(act_w)  # [M, I]
        d_down = _zero_missing(torch.empty_like(down), counts) if ctx.needs_input_grad[3] else None
        for e, dy_e, w_e, da_e, a_e in _runs(counts, d_ys, down, d_act_w, act_w):
            torch.mm(dy_e, w_e, out=da_e)
            if d_down is not None:
                torch.mm(dy_e.t(), a_e, out=d_down[e])
        d_h, d_w = glue.activation_backward(h, w, d_act_w, ctx.needs_input_grad[1])
        d_xs = torch.empty_like(xs) if ctx.needs_input_grad[0] else None
        d_gate_up = _zero_missing(torch.empty_like(gate_up), counts) if ctx.needs_input_grad[2] else None
        for e, dh_e, w_e, x_e, dx_e in _runs(counts, d_h, gate_up, xs, xs if d_xs is None else d_xs):
            if d_xs is not None:
                torch.mm(dh_e, w_e, out=dx_e)
            if d_gate_up is not None:
                torch.mm(dh_e.t(), x_e, out=d_gate_up[e])
        d_x = None if d_xs is None else glue.token_sums(d_xs)
        return d_x, d_w, d_gate_up, d_down, None, None


def _sum_rows(rows: torch.Tensor, token: torch.Tensor, n: int) -> torch.Tensor:
    """[M, D] rows of tokens `token` [M] -> [N, D] per-token sums (fp32 accumulation for half inputs).
    On CPU index_add_ is a plain accumulating loop, ~3x faster than gathering by the inverse permutation and
    summing, and ~6x faster than index_put_(accumulate=True), the backward of x[token]."""
    acc = torch.float32 if rows.dtype in (torch.bfloat16, torch.float16) else rows.dtype
    return rows.new_zeros(n, rows.shape[1], dtype=acc).index_add_(0, token, rows.to(acc)).to(rows.dtype)


def _padded(x, idx, w, gate_up, down, counts_t, cap):
    """The few-rows formulation (no autograd): rows padded to [E, cap, D], one bmm per projection."""
    n, k = idx.shape
    e, i = gate_up.shape[0], down.shape[2]
    flat = idx.flatten()  # [M]
    order = flat.argsort(stable=True)
    sorted_e = flat[order]
    starts = counts_t.cumsum(0) - counts_t  # [E] first sorted row of each expert
    rank = torch.arange(flat.numel(), device=idx.device) - starts[sorted_e]  # row's place within its expert
    slot = torch.empty_like(order)
    slot[order] = sorted_e * cap + rank  # padded slot of each (token, slot) pair
    xp = x.new_zeros(e * cap, x.shape[1]).index_copy_(0, slot, x.repeat_interleave(k, 0))  # [E*cap, D]
    wp = x.new_zeros(e * cap).index_copy_(0, slot, w.flatten())  # [E*cap]
    h = torch.bmm(xp.view(e, cap, -1), gate_up.transpose(1, 2))  # [E, cap, 2I]
    act = F.silu(h[..., :i]).mul_(h[..., i:]).mul_(wp.view(e, cap, 1))  # [E, cap, I]
    yp = torch.bmm(act, down.transpose(1, 2)).view(e * cap, -1)  # [E*cap, D]
    return yp.index_select(0, slot).view(n, k, -1).sum(1)  # K slots of each token (fp32 accumulation)


def routed_swiglu(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor,
                  down: torch.Tensor) -> torch.Tensor:
    """See the module docstring. Differentiable in x, w, gate_up and down; idx are expert ids in [0, E)."""
    n, k = idx.shape
    if x.shape[0] != n or w.shape != idx.shape:
        raise ValueError(f"x {tuple(x.shape)}, idx {tuple(idx.shape)} and w {tuple(w.shape)} must agree on N (and K)")
    if torch.is_autocast_enabled(x.device.type):  # mm(out=) is not autocast: cast here (differentiably) instead
        dt = torch.get_autocast_dtype(x.device.type)
        x, gate_up, down = x.to(dt), gate_up.to(dt), down.to(dt)
    w = w.to(x.dtype)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w, gate_up, down))
    return dispatch.call("routed_swiglu", x, idx, w, gate_up, down, grad)


def reference(x, idx, w, gate_up, down, grad: bool, glue_layout=None) -> torch.Tensor:
    """The torch formulations: padded without gradients when few rows per expert, else grouped. glue_layout(x, w,
    flat, counts_t, E, K) -> (glue, rows of each expert) or None: a backend's glue for the grouped formulation
    (None, or when it returns None: TorchGlue)."""
    k = idx.shape[1]
    flat = idx.flatten()
    counts_t = torch.bincount(flat, minlength=gate_up.shape[0])  # [E] rows per expert
    cap = int(counts_t.max())
    tuning = TUNING.get(x.device.type, UNMEASURED)
    padded_rows = counts_t.numel() * cap
    if not grad and 0 < cap <= tuning.padded_max_rows and padded_rows <= tuning.padded_max_waste * flat.numel():
        with torch.no_grad():
            return _padded(x, idx, w, gate_up, down, counts_t, cap)
    got = None if glue_layout is None else glue_layout(x, w, flat, counts_t, gate_up.shape[0], k)
    if got is None:
        align = _row_align(x)
        glue = TorchGlue(flat.argsort(stable=True), counts_t.tolist(), k, x.shape[0], align)
        got = glue, glue.counts
    glue, counts = got  # the rows sorted by expert
    if grad:
        return _RoutedSwiGLU.apply(x, w.flatten(), gate_up, down, glue, counts)
    with torch.no_grad():
        return _RoutedSwiGLU.forward(_NoCtx(), x, w.flatten(), gate_up, down, glue, counts)


dispatch.register("routed_swiglu", "torch")(reference)


def _row_align(x: torch.Tensor) -> int:
    """Rows per expert in the grouped layout are padded to a multiple of this (TUNING: bf16/fp16 on CPU)."""
    half = x.dtype in (torch.bfloat16, torch.float16)
    return TUNING.get(x.device.type, UNMEASURED).half_row_align if half else 1


class _NoCtx:
    """Stand-in for the autograd context when nothing needs gradients (inference)."""

    def save_for_backward(self, *tensors):
        pass
