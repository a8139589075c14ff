"""Native CPU kernels: C sources in r1kit/models/csrc, compiled on first use with the system C compiler.

Some CPU work is all call overhead or copies when written as torch ops: a decode step's routed experts are ~60 tiny
matmuls per MoE layer (csrc/routed_swiglu.c; in GRPO rollouts over column-blocked copies of the weights, which
stream at twice the speed, as do the decode linears of csrc/blocked_linear.c: r1kit/models/weight_blocks.py), and
paged decode attention gathers every row's context into a padded copy before attending (csrc/paged_decode.c, for MLA
and GQA caches; shared vector code in csrc/dots.h), and the per-token small ops of a decode step are chains of tiny
torch calls (RMSNorm, rope, DeepSeek-V3's expert selection: csrc/decode_small_ops.c; RMSNorm also has a
differentiable version for training, `rms_norm_train`), and the routed experts' training sorts, gathers and sums
rows around its matmuls (csrc/moe_train.c), and GRPO's shared-prefix rows need attention with a mask torch's CPU
flash kernel can only take as an explicit tensor over copied keys (csrc/shared_prefix_attention.c, forward and
backward; its autograd wrapper lives in attention.py). Those few kernels are plain C (no torch headers: a build
takes a few seconds), compiled together for this machine (-march=native) into one shared library cached under
$R1KIT_CACHE_DIR/kernels (default ~/.cache/r1kit/kernels), keyed by a hash of the source, the compiler, the flags
and the CPU, and called through ctypes on the tensors' memory. They compute in fp32; the weights and KV cache they
read may also be bf16 (a model loaded in bf16), widened to fp32 as they load, which halves the memory traffic of a
decode step. Nothing depends on them: without a C compiler, with R1KIT_NATIVE=0, or when a build or load fails,
`load` returns None (after one warning), and so do the wrappers below for inputs they do not handle (other devices
or dtypes, mismatched shapes): callers then keep their PyTorch path. The exception is the experts' training glue at
the end: `expert_order` decides whether it runs, and the four after it trust their caller
(grouped_experts._NativeGlue) for contiguous CPU fp32 inputs. The compiler is $CC, else cc.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

SOURCES = Path(__file__).with_name("csrc")
# Rows per work item of the routed-experts kernel (at most 64): an item reads its expert's weights once for all of
# its rows, so fewer, larger items stream less. Measured against 8 on the small preset's 7 MoE layers cycled (2-core
# Zen 4): 1.4 -> 1.1 ms per layer at 64 tokens, 3.7 -> 3.1 ms at 256, the same at 8.
ROUTED_TILE = 32
# (compile flags, link flags), tried in order; the first that builds wins. -ffast-math + glibc's libmvec vectorize
# expf (the SwiGLU activation: a 2.3x faster kernel); the kernels have no NaN/inf checks that fast-math could fold
# (softmax's max starts from a real score, not -inf), and no intermediate may overflow to inf (fast-math divides by
# a refined reciprocal estimate, which makes x / inf NaN: the sigmoid is written with a bounded denominator).
# Objects are linked in a separate step without -ffast-math: linking with it adds crtfastmath.o, which switches the
# whole process to flush-denormals-to-zero when the library loads. Then without libmvec (macOS, musl), without
# OpenMP (Apple clang), without -march=native.
FLAG_SETS = (
    (["-O3", "-march=native", "-ffast-math", "-fopenmp"], ["-fopenmp", "-lmvec", "-lm"]),
    (["-O3", "-march=native", "-fopenmp"], ["-fopenmp", "-lm"]),
    (["-O3", "-march=native"], ["-lm"]),
    (["-O3"], ["-lm"]),
)


def cache_dir() -> Path:
    return Path(os.environ.get("R1KIT_CACHE_DIR") or Path.home() / ".cache" / "r1kit") / "kernels"


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (a shared cache across machines must not
    hand one CPU's binary to another)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    """The library for this source, compiler and CPU: a cached one built with any of FLAG_SETS if there is one (so
    a flag set that fails here is not retried at every start), else the first that builds. Raises RuntimeError."""
    sources = sorted(SOURCES.glob("*.c"))
    text = "\0".join(f.read_text() for f in sorted(SOURCES.iterdir()) if f.suffix in (".c", ".h"))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    out_dir = cache_dir()
    libs = [out_dir / ("r1kit_cpu-" + hashlib.sha256("\0".join([text, version, " ".join(cflags + ldflags),
                                                                   _cpu_id()]).encode()).hexdigest()[:16] + ".so")
            for cflags, ldflags in FLAG_SETS]
    for lib in libs:
        if lib.exists():
            return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    error = ""
    for (cflags, ldflags), lib in zip(FLAG_SETS, libs):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            objects = [str(Path(tmp) / f"{src.stem}.o") for src in sources]
            steps = [[compiler, "-c", "-fPIC", "-std=c11", *cflags, "-o", obj, str(src)]
                     for src, obj in zip(sources, objects)]
            steps.append([compiler, "-shared", "-o", f"{tmp}/lib.so", *objects, *ldflags])
            for cmd in steps:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if run.returncode != 0:
                    error = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
                    break
            else:
                os.replace(f"{tmp}/lib.so", lib)  # atomic: concurrent builds (torchrun ranks) publish whole files
                return lib
    raise RuntimeError(error)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernels' shared library, built if needed; None when native kernels are off or cannot be built or
    loaded (with one warning: whatever goes wrong here, callers fall back to their PyTorch path)."""
    if os.environ.get("R1KIT_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        warnings.warn(f"r1kit: no C compiler ({compiler!r}; set CC) for the native CPU kernels; using the slower "
                      "PyTorch path", RuntimeWarning, stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
        _declare(lib)
        return lib
    except Exception as exc:  # a failed compile, an unwritable cache dir, a library that does not load
        warnings.warn(f"r1kit: building the native CPU kernels with {compiler} failed ({exc}); using the PyTorch "
                      "path", RuntimeWarning, stacklevel=2)
        return None


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "routed_swiglu_f32": [ptr] * 7 + [i64] * 5 + [ctypes.c_int] * 2,
        "routed_swiglu_bf16w": [ptr] * 7 + [i64] * 5 + [ctypes.c_int] * 2,
        "routed_swiglu_blocked_f32": [ptr] * 7 + [i64] * 5 + [ctypes.c_int] * 2,
        "linear_blocked_f32": [ptr] * 3 + [i64] * 3 + [ctypes.c_int],
        "paged_decode_f32": [ptr] * 6 + [i64] * 10 + [ctypes.c_float, ctypes.c_int],
        "paged_decode_bf16kv": [ptr] * 6 + [i64] * 10 + [ctypes.c_float, ctypes.c_int],
        "rms_norm_fwd_f32": [ptr] * 4 + [i64] * 3 + [ctypes.c_float],
        "rms_norm_bwd_f32": [ptr] * 7 + [i64] * 3 + [ctypes.c_int],
        "rope_f32": [ptr] * 4 + [i64] * 5 + [ctypes.c_int],
        "router_select_f32": [ptr] * 4 + [i64] * 5 + [ctypes.c_int, ctypes.c_float],
        "expert_order": [ptr, i64, i64, ptr, ptr, ptr],
        "gather_rows_f32": [ptr, ptr, i64, ptr, i64, i64, ctypes.c_int],
        "swiglu_fwd_f32": [ptr] * 4 + [i64] * 2 + [ctypes.c_int],
        "swiglu_bwd_f32": [ptr] * 6 + [i64] * 2 + [ctypes.c_int],
        "token_sums_f32": [ptr] * 3 + [i64] * 3 + [ctypes.c_int],
        "sp_attention_fwd": [ptr] * 6 + [i64] * 7 + [ptr] * 4 + [ctypes.c_float, ctypes.c_int],
        "sp_attention_bwd": [ptr] * 10 + [i64] * 7 + [ptr] * 8 + [ctypes.c_float, ctypes.c_int],
    }
    void = {"linear_blocked_f32", "gather_rows_f32", "swiglu_fwd_f32", "swiglu_bwd_f32", "token_sums_f32"}
    for name, args in signatures.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = (None if name in void else ctypes.c_int), args


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _usable(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library, if it is available and every tensor is a plain CPU fp32 tensor: not a tensor subclass (a
    FakeTensor while tracing, whose data_ptr is 0; a DTensor) nor a functorch (vmap, grad) wrapper, so the kernels
    may read its memory through data_ptr(). The wrappers check bf16 weights and caches themselves. One loop, no
    generators: the decode step calls this ~60 times (1.3 us a call)."""
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or type(t) not in _PLAIN or _functorch_wrapped(t):
            return None
    return load()


def routed_swiglu(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor,
                  down: torch.Tensor, blocks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """csrc/routed_swiglu.c (no autograd): the contract of grouped_experts.routed_swiglu, on CPU tensors, for fp32
    experts with fp32 x and w, or bf16 experts (a bf16 model) with x and w of either dtype. bf16 weights are widened
    to fp32 as they load: half the memory traffic, fp32 arithmetic; the output has x's dtype. None when the kernel
    is unavailable or the inputs are not of that kind; the caller then uses its PyTorch path. blocks: fp32
    column-blocked copies of (gate_up, down) from r1kit.models.weight_blocks, run by the blocked kernel."""
    half = (gate_up.dtype == down.dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
            and w.dtype in (torch.float32, torch.bfloat16))
    xf, wf = (x.float(), w.float()) if half else (x, w)  # the kernel's fp32 activations (no copy when fp32)
    if half:
        lib = _usable(xf, wf) if gate_up.device.type == down.device.type == "cpu" else None
    else:
        lib = _usable(x, w, gate_up, down)
    if lib is None or idx.device.type != "cpu" or idx.dim() != 2 or gate_up.dim() != 3:
        return None
    n, k = idx.shape
    e, i2, d = gate_up.shape
    if x.shape != (n, d) or w.shape != (n, k) or down.shape != (e, d, i2 // 2) or i2 % 2:
        return None  # the PyTorch path says what is wrong
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
    blocks [ceil(n/32), K, 32] (r1kit.models.weight_blocks checks the inputs and makes the copy)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = rows.new_empty(rows.shape[0], n)
    load().linear_blocked_f32(rows.data_ptr(), blocks.data_ptr(), out.data_ptr(), rows.shape[0], n, rows.shape[1],
                              torch.get_num_threads())
    return out.view(*x.shape[:-1], n)


def mla_decode(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
               r: int, scale: float) -> torch.Tensor | None:
    """csrc/paged_decode.c for MLA: q [N, H, R + rope] absorbed queries, cache [num_blocks, block_size, R + rope],
    tables [N, nblk] block ids and lens [N] context lengths of each row -> [N, H, R] attention-weighted latents
    (multi-query: the latent is the key, its first R floats the value). None when the kernel cannot take them."""
    if q.dim() != 3 or cache.dim() != 3 or cache.shape[2] != q.shape[2] or not 0 < r <= q.shape[2]:
        return None
    return _paged_decode(q, cache, tables, lens, hkv=1, dv=r, value_offset=0, kv_stride=0, scale=scale)


def gqa_decode(q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
               scale: float) -> torch.Tensor | None:
    """csrc/paged_decode.c for GQA: q [N, Hq, D], cache [num_blocks, block_size, 2, Hkv, D], tables [N, nblk] and
    lens [N] of each row -> [N, Hq, D]. None when the kernel cannot take them."""
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
    lib = (_usable(qf) if cache.device.type == "cpu" else None) if half else _usable(q, cache)
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


def _norm_rows(x: torch.Tensor, weight: torch.Tensor):
    """(library, x as rows [n, d], their stride) when the RMSNorm kernels take x and weight: CPU fp32, d > 0, x's
    last dim contiguous and its rows evenly strided (2-D, or contiguous); else None."""
    lib, d = _usable(x, weight), (x.shape[-1] if x.dim() else 0)
    if lib is None or d == 0 or weight.shape != (d,) or x.stride(-1) != 1 or not weight.is_contiguous():
        return None
    if x.dim() == 2:
        return lib, x, x.stride(0)
    return (lib, x.view(-1, d), d) if x.is_contiguous() else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """csrc/decode_small_ops.c (no autograd): F.rms_norm(x, weight) over the last dim for CPU fp32 x and weight;
    x's rows may be strided (a 2-D slice of a wider tensor). None when the kernel cannot take them."""
    got = _norm_rows(x, weight)
    if got is None:
        return None
    lib, rows, stride = got
    out = x.new_empty(x.shape)
    lib.rms_norm_fwd_f32(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), None, rows.shape[0], x.shape[-1],
                         stride, eps)
    return out


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
    @once_differentiable  # the C backward is not differentiable: a double backward raises instead of being wrong
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
    """Differentiable F.rms_norm(x, weight) for CPU fp32 (csrc/decode_small_ops.c): one pass forward, one backward,
    where torch's composite CPU version runs ~15 elementwise calls (2.7 ms for a [2216, 256] forward and backward).
    None when the kernel cannot take them."""
    got = _norm_rows(x, weight)
    if got is None:
        return None
    lib, rows, stride = got
    return _RMSNormFunction.apply(x, weight, rows, stride, eps, lib)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor | None:
    """csrc/decode_small_ops.c (no autograd): layers.apply_rope for the engine's flat layout, CPU fp32: x [T, d]
    with cos/sin [T, d/2], or x [T, H, d] with cos/sin [T, 1, d/2]; x may be a strided view (q_pe split off q).
    None when the kernel cannot take them."""
    if x.dim() not in (2, 3):
        return None
    lib, d = _usable(x, cos, sin), x.shape[-1]
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
    """csrc/decode_small_ops.c (no autograd): DeepSeek-V3's group-limited top-k routing from sigmoid scores [N, E]
    (fp32, CPU) and the correction bias [E] -> expert ids [N, k] and weights [N, k] (see deepseek_v3.Router). None
    when the kernel cannot take them."""
    lib = _usable(scores, bias)
    if lib is None or scores.dim() != 2 or bias.shape != (scores.shape[1],):
        return None
    n, e = scores.shape
    scores, bias = scores.contiguous(), bias.contiguous()
    idx, w = scores.new_empty(n, k, dtype=torch.int64), scores.new_empty(n, k)  # not the default dtype/device
    if n and lib.router_select_f32(scores.data_ptr(), bias.data_ptr(), idx.data_ptr(), w.data_ptr(), n, e, k,
                                   groups, topk_groups, int(norm), scaling) != 0:
        return None  # sizes the kernel does not take (over 1,024 experts): the PyTorch path
    return idx, w


# -- the routed experts' training glue (csrc/moe_train.c), for grouped_experts._NativeGlue ---------------------------
# expert_order decides whether the glue runs (None: the torch glue does); the others take what it laid out: CPU fp32
# tensors made by the experts' forward and backward.

def expert_order(flat: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor, list[int]] | None:
    """Stable counting sort of the expert ids flat [M] (CPU) -> (order [M]: the pair of each sorted row, inverse [M]:
    the sorted row of each pair, rows of each of the e experts). None when the library is unavailable or flat is not
    a plain 1-D CPU tensor. ValueError for ids outside [0, e)."""
    lib = load()
    if lib is None or flat.device.type != "cpu" or flat.dim() != 1 or type(flat) not in _PLAIN:
        return None
    flat = flat.to(torch.int64).contiguous()
    order, inverse, counts = torch.empty_like(flat), torch.empty_like(flat), flat.new_empty(e)
    if lib.expert_order(flat.data_ptr(), flat.numel(), e, order.data_ptr(), inverse.data_ptr(), counts.data_ptr()):
        raise ValueError(f"expert ids outside [0, {e})")
    return order, inverse, counts.tolist()


def gather_rows(src: torch.Tensor, index: torch.Tensor, div: int) -> torch.Tensor:
    """[index.numel(), C] rows src[index // div] of src [N, C]."""
    src = src.contiguous()
    out = src.new_empty(index.numel(), src.shape[1])
    load().gather_rows_f32(src.data_ptr(), index.data_ptr(), div, out.data_ptr(), index.numel(), src.shape[1],
                           torch.get_num_threads())
    return out


def swiglu(h: torch.Tensor, w: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """h [M, 2I] (gate | up), w [N*K] routing weights, order [M] -> silu(gate) * up * w[order] [M, I]."""
    m, i = h.shape[0], h.shape[1] // 2
    out = h.new_empty(m, i)
    load().swiglu_fwd_f32(h.data_ptr(), w.contiguous().data_ptr(), order.data_ptr(), out.data_ptr(), m, i,
                          torch.get_num_threads())
    return out


def swiglu_backward(h: torch.Tensor, w: torch.Tensor, order: torch.Tensor, d_act: torch.Tensor):
    """The gradients of `swiglu` from d_act [M, I]: (d_h [M, 2I], d_w [N*K])."""
    m, i = h.shape[0], h.shape[1] // 2
    d_h, d_w, w = torch.empty_like(h), w.new_empty(w.numel()), w.contiguous()
    load().swiglu_bwd_f32(h.data_ptr(), w.data_ptr(), order.data_ptr(), d_act.contiguous().data_ptr(), d_h.data_ptr(),
                          d_w.data_ptr(), m, i, torch.get_num_threads())
    return d_h, d_w.view(w.shape)


def token_sums(rows: torch.Tensor, inverse: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """[N, D] sums of each token's k rows of rows [N*K, D] (sorted by expert; inverse: the row of each pair)."""
    out = rows.new_empty(n, rows.shape[1])
    load().token_sums_f32(rows.data_ptr(), inverse.data_ptr(), out.data_ptr(), n, k, rows.shape[1],
                          torch.get_num_threads())
    return out
