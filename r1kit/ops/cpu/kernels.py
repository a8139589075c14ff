"""ctypes wrappers of the CPU backend's inference kernels (csrc/*.c; no autograd): check the inputs, call C on the
tensors' memory.

Some CPU work is all call overhead or copies when written as torch ops: a decode step's routed experts are ~60 tiny
matmuls per MoE layer (csrc/routed_swiglu.c; in GRPO rollouts over column-blocked copies of the weights, which
stream at twice the speed, as do the decode linears of csrc/blocked_linear.c: weight_blocks.py), paged decode
attention gathers every row's context into a padded copy before attending (csrc/paged_decode.c, for MLA and GQA
caches; shared vector code in csrc/dots.h), and the per-token small ops of a decode step are chains of tiny torch
calls (RMSNorm, rope, DeepSeek-V3's expert selection: csrc/decode_small_ops.c). The differentiable kernels used in
training are in train_kernels.py.

The kernels compute in fp32; the weights and KV cache they read may also be bf16 (a model loaded in bf16), widened
to fp32 as they load, which halves the memory traffic of a decode step. Every wrapper returns None for inputs it
does not handle (other devices or dtypes, mismatched shapes) and when the library is unavailable: the dispatch then
runs the torch reference, which says what is wrong with bad inputs.
"""
from __future__ import annotations

import ctypes

import torch

from r1kit.ops.cpu import library

# Rows per work item of the routed-experts kernel (at most 64): an item reads its expert's weights once for all of
# its rows, so fewer, larger items stream less. Measured against 8 on the small preset's 7 MoE layers cycled (2-core
# Zen 4): 1.4 -> 1.1 ms per layer at 64 tokens, 3.7 -> 3.1 ms at 256, the same at 8.
ROUTED_TILE = 32

PLAIN = (torch.Tensor, torch.nn.Parameter)
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def usable(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library, if it is available and every tensor is a plain CPU fp32 tensor: not a tensor subclass (a
    FakeTensor while tracing, whose data_ptr is 0; a DTensor) nor a functorch (vmap, grad) wrapper, so the kernels
    may read its memory through data_ptr(). The wrappers check bf16 weights and caches themselves. One loop, no
    generators: the decode step calls this ~60 times (1.3 us a call)."""
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or type(t) not in PLAIN or _functorch_wrapped(t):
            return None
    return library.load()


def routed_swiglu(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor,
                  down: torch.Tensor, blocks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """csrc/routed_swiglu.c: the contract of r1kit.ops.experts.routed_swiglu, on CPU tensors, for fp32 experts with
    fp32 x and w, or bf16 experts (a bf16 model) with x and w of either dtype. bf16 weights are widened to fp32 as
    they load: half the memory traffic, fp32 arithmetic; the output has x's dtype. blocks: fp32 column-blocked
    copies of (gate_up, down) from weight_blocks.expert_blocks, run by the blocked kernel."""
    half = (gate_up.dtype == down.dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
            and w.dtype in (torch.float32, torch.bfloat16))
    xf, wf = (x.float(), w.float()) if half else (x, w)  # the kernel's fp32 activations (no copy when fp32)
    if half:
        lib = usable(xf, wf) if gate_up.device.type == down.device.type == "cpu" else None
    else:
        lib = usable(x, w, gate_up, down)
    if lib is None or idx.device.type != "cpu" or idx.dim() != 2 or gate_up.dim() != 3:
        return None
    n, k = idx.shape
    e, i2, d = gate_up.shape
    if x.shape != (n, d) or w.shape != (n, k) or down.shape != (e, d, i2 // 2) or i2 % 2:
        return None  # the torch reference says what is wrong
    if n == 0 or k == 0:
        return x.new_zeros(n, d)
    blocks = None if half else blocks
    xf, wf, gate_up, down = (t.contiguous() for t in (xf, wf, gate_up, down))
    idx = idx.to(torch.int64).contiguous()
    out, work = xf.new_empty(n, d), xf.new_empty(n * k, d)
    if blocks is not None:
        kernel, (gate_up, down) = lib.routed_swiglu_blocked_f32, blocks
    else:
        kernel = lib.routed_swiglu_bf16w if half else lib.routed_swiglu_f32
    rc = kernel(xf.data_ptr(), idx.data_ptr(), wf.data_ptr(), gate_up.data_ptr(), down.data_ptr(), out.data_ptr(),
                work.data_ptr(), n, k, e, d, i2 // 2, ROUTED_TILE, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"native routed_swiglu failed (expert ids outside [0, {e}) or out of memory)")
    return out.to(x.dtype)


def linear_over_blocks(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    """csrc/blocked_linear.c: x [..., K] (CPU fp32) @ W^T -> [..., n], W [n, K] given as its column-blocked copy
    blocks [ceil(n/32), K, 32] (weight_blocks.linear checks the inputs and makes the copy)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = rows.new_empty(rows.shape[0], n)
    library.load().linear_blocked_f32(rows.data_ptr(), blocks.data_ptr(), out.data_ptr(), rows.shape[0], n,
                                      rows.shape[1], torch.get_num_threads())
    return out.view(*x.shape[:-1], n)


def mla_decode(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
               r: int, scale: float) -> torch.Tensor | None:
    """csrc/paged_decode.c for MLA: q [N, H, R + rope] absorbed queries, cache [num_blocks, block_size, R + rope],
    tables [N, nblk] block ids and lens [N] context lengths of each row -> [N, H, R] attention-weighted latents
    (multi-query: the latent is the key, its first R floats the value)."""
    if q.dim() != 3 or cache.dim() != 3 or cache.shape[2] != q.shape[2] or not 0 < r <= q.shape[2]:
        return None
    return _paged_decode(q, cache, tables, lens, hkv=1, dv=r, value_offset=0, kv_stride=0, scale=scale)


def gqa_decode(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
               scale: float) -> torch.Tensor | None:
    """csrc/paged_decode.c for GQA: q [N, Hq, D], cache [num_blocks, block_size, 2, Hkv, D], tables [N, nblk] and
    lens [N] of each row -> [N, Hq, D]."""
    if q.dim() != 3 or cache.dim() != 5 or cache.shape[2] != 2 or cache.shape[4] != q.shape[2]:
        return None
    hkv, d = cache.shape[3], q.shape[2]
    if hkv == 0 or q.shape[1] % hkv:
        return None
    return _paged_decode(q, cache, tables, lens, hkv=hkv, dv=d, value_offset=hkv * d, kv_stride=d, scale=scale)


def _paged_decode(q, cache, tables, lens, hkv: int, dv: int, value_offset: int, kv_stride: int,
                  scale: float) -> torch.Tensor | None:
    """Both layouts: a token of the cache is cache[block, offset] flattened; kv head g's key starts g * kv_stride
    elements into it, its value value_offset + g * kv_stride elements in (see csrc/paged_decode.c). An fp32 cache
    takes fp32 queries; a bf16 cache (a bf16 model's) takes fp32 or bf16 queries, computed in fp32. The output has
    q's dtype."""
    half = cache.dtype == torch.bfloat16 and q.dtype in (torch.float32, torch.bfloat16)
    qf = q.float() if half else q  # the kernel's fp32 queries (no copy when fp32)
    lib = (usable(qf) if cache.device.type == "cpu" else None) if half else usable(q, cache)
    n = q.shape[0]
    if (lib is None or tables.device.type != "cpu" or not cache.is_contiguous() or tables.dim() != 2
            or tables.shape[0] != n or lens.shape != (n,)):
        return None
    hq, d = q.shape[1:]
    qf, tables, lens = qf.contiguous(), tables.to(torch.int64).contiguous(), lens.to(torch.int64).contiguous()
    out = qf.new_empty(n, hq, dv)
    k = cache.data_ptr()
    kernel = lib.paged_decode_bf16kv if half else lib.paged_decode_f32
    rc = kernel(qf.data_ptr(), k, k + value_offset * cache.element_size(), tables.data_ptr(), lens.data_ptr(),
                out.data_ptr(), n, hq, hkv, d, dv, cache[0, 0].numel(), kv_stride, cache.shape[1], tables.shape[1],
                cache.shape[0], scale, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError("native paged_decode failed (block ids or lengths out of range, or out of memory)")
    return out.to(q.dtype)


def norm_rows(x: torch.Tensor, weight: torch.Tensor):
    """(library, x as rows [n, d], their stride) when the RMSNorm kernels take x and weight: CPU fp32, d > 0, x's
    last dim contiguous and its rows evenly strided (2-D, or contiguous); else None."""
    lib, d = usable(x, weight), (x.shape[-1] if x.dim() else 0)
    if lib is None or d == 0 or weight.shape != (d,) or x.stride(-1) != 1 or not weight.is_contiguous():
        return None
    if x.dim() == 2:
        return lib, x, x.stride(0)
    return (lib, x.view(-1, d), d) if x.is_contiguous() else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """csrc/decode_small_ops.c: F.rms_norm(x, weight) over the last dim for CPU fp32 x and weight; x's rows may be
    strided (a 2-D slice of a wider tensor)."""
    got = norm_rows(x, weight)
    if got is None:
        return None
    lib, rows, stride = got
    out = x.new_empty(x.shape)
    lib.rms_norm_fwd_f32(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), None, rows.shape[0], x.shape[-1],
                         stride, eps)
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor | None:
    """csrc/decode_small_ops.c: r1kit.ops.rope for the engine's flat layout, CPU fp32: x [T, d] with cos/sin
    [T, d/2], or x [T, H, d] with cos/sin [T, 1, d/2]; x may be a strided view (q_pe split off q)."""
    if x.dim() not in (2, 3):
        return None
    lib, d = usable(x, cos, sin), x.shape[-1]
    if lib is None or d % 2 or x.stride(-1) != 1:
        return None
    t, h = x.shape[0], (x.shape[1] if x.dim() == 3 else 1)
    want = (t, 1, d // 2) if x.dim() == 3 else (t, d // 2)
    if cos.shape != want or sin.shape != want or not (cos.is_contiguous() and sin.is_contiguous()):
        return None
    out = x.new_empty(x.shape)
    lib.rope_f32(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), t, h, d, x.stride(0),
                 x.stride(1) if x.dim() == 3 else 0, int(interleave))
    return out


def router_select(scores: torch.Tensor, bias: torch.Tensor, k: int, groups: int, topk_groups: int, norm: bool,
                  scaling: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """csrc/decode_small_ops.c: DeepSeek-V3's group-limited top-k routing from sigmoid scores [N, E] (fp32, CPU)
    and the correction bias [E] -> expert ids [N, k] and weights [N, k] (r1kit.ops.route's contract; exact ties go
    to the lowest expert id)."""
    lib = usable(scores, bias)
    if lib is None or scores.dim() != 2 or bias.shape != (scores.shape[1],):
        return None
    n, e = scores.shape
    scores, bias = scores.contiguous(), bias.contiguous()
    idx, w = scores.new_empty(n, k, dtype=torch.int64), scores.new_empty(n, k)  # not the default dtype/device
    if n and lib.router_select_f32(scores.data_ptr(), bias.data_ptr(), idx.data_ptr(), w.data_ptr(), n, e, k,
                                   groups, topk_groups, int(norm), scaling) != 0:
        return None  # sizes the kernel does not take (over 1,024 experts): the torch reference
    return idx, w
