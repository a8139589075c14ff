"""Attention of the training / reference path (no KV cache): plain causal, masked, or shared-prefix groups.

Every attention layer (MLA in deepseek_v3.py, GQA in llama.py) computes q, k, v in [B, H, T, d] and calls
`attend(q, k, v, mask, scale)`. `mask` is what the model forward built:
    None                     plain causal attention
    Padding                  a padded batch: its token mask [B, T] (MoE layers keep padding out of their balance
                             statistics) and, for left padding, a bool [B, 1, T, T] "may attend" mask (right padding
                             needs none: causal attention never looks past a token)
    SharedPrefix             GRPO's packed groups, below

Shared-prefix groups. GRPO trains on G completions of the same prompt. Run one by one, the prompt's tokens go
through every layer G times although their activations are identical. A packed row instead holds the prompt once,
then the G completions one after another:

    row g = [ prompt_g (left-padded to P) | completion_g,1 (right-padded to C) | ... | completion_g,G ]

Every per-token op (projections, MLP/MoE, norms) sees each prompt token once. Attention keeps the semantics of
separate sequences: the prompt attends causally to itself; completion i attends to the whole prompt and causally to
itself, never to completion j. Positions are passed explicitly (a completion starts at the prompt's length), so
logits and gradients equal those of the unpacked batch up to float rounding; the prompt's gradient collects the
contributions of all G completions. For GRPO's prompts of ~85 tokens and completions of ~128, this removes a third
of the tokens of the training forward and backward. On CPU in fp32 the attention itself runs in one C kernel
(native_shared_prefix_attention below) that reads the row as it is; elsewhere it is two SDPA calls, the completions'
keys being the prompt's repeated G times next to each completion's own.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from r1kit.models import native


@dataclass
class Padding:
    """A padded batch (see the module docstring)."""
    token_mask: torch.Tensor                # [B, T] 1 on real tokens
    attn_mask: torch.Tensor | None = None   # bool [B, 1, T, T] for left padding, else None (causal suffices)


@dataclass
class SharedPrefix:
    """Layout of a packed batch of Ng rows of length P + G * C (see the module docstring)."""

    prefix_len: int                # P
    group_size: int                # G: completions per row
    completion_len: int            # C
    prefix_valid: torch.Tensor     # [Ng, P] bool: False on the prompt's left padding
    token_mask: torch.Tensor | None = None  # [Ng, L] 1 on real tokens (MoE balance statistics skip padding)

    def __post_init__(self) -> None:
        if self.prefix_valid.shape[1] != self.prefix_len:
            raise ValueError(f"prefix_valid has {self.prefix_valid.shape[1]} columns for prefix_len {self.prefix_len}")

    # The SDPA path's masks, built when it first runs (the native kernel needs neither)
    @functools.cached_property
    def prefix_mask(self) -> torch.Tensor:
        """[Ng, 1, P, P] bool: a prompt query sees the valid prompt keys up to itself; a padding query sees only
        itself, so its (unused) row stays finite."""
        p, dev = self.prefix_len, self.prefix_valid.device
        causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
        return (causal & self.prefix_valid.bool()[:, None, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)

    @functools.cached_property
    def completion_mask(self) -> torch.Tensor:
        """[Ng*G, 1, C, P + C] bool: a completion query sees every valid prompt key and its own keys up to itself."""
        valid, c = self.prefix_valid.bool(), self.completion_len
        ng, p = valid.shape
        causal = torch.ones(c, c, dtype=torch.bool, device=valid.device).tril()
        mask = torch.cat([valid[:, None, :].expand(ng, c, p), causal.expand(ng, c, c)], dim=-1)  # [Ng, C, P + C]
        return mask.repeat_interleave(self.group_size, dim=0)[:, None]

    @functools.cached_property
    def prefix_valid_u8(self) -> torch.Tensor:
        """[Ng, P] uint8, for the native kernel"""
        return self.prefix_valid.to(torch.uint8).contiguous()

    @property
    def row_len(self) -> int:
        return self.prefix_len + self.group_size * self.completion_len

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q/k [Ng, H, L, d], v [Ng, H, L, dv] with L = P + G*C -> [Ng, H, L, dv]. On CPU, the native kernel
        (csrc/shared_prefix_attention.c: no copies of the prompt's keys, no masked blocks; in fp32, also under
        autocast) when it takes the shapes, else two SDPA calls."""
        P, G, C = self.prefix_len, self.group_size, self.completion_len
        if q.device.type == "cpu":
            if torch.is_autocast_enabled("cpu"):
                q, k, v = q.float(), k.float(), v.float()
            out = native_shared_prefix_attention(q, k, v, self.prefix_valid_u8, (P, G, C), scale)
            if out is not None:
                return out
        ng = q.shape[0]
        out_p = _sdpa(q[:, :, :P], k[:, :, :P], v[:, :, :P], attn_mask=self.prefix_mask,
                      scale=scale)  # [Ng, H, P, dv]

        def completions(x: torch.Tensor) -> torch.Tensor:  # [Ng, H, G*C, d] -> [Ng*G, H, C, d]
            return x[:, :, P:].unflatten(2, (G, C)).transpose(1, 2).flatten(0, 1)

        keys = torch.cat([k[:, :, :P].repeat_interleave(G, dim=0), completions(k)], dim=2)    # [Ng*G, H, P+C, d]
        values = torch.cat([v[:, :, :P].repeat_interleave(G, dim=0), completions(v)], dim=2)
        out_c = _sdpa(completions(q), keys, values, attn_mask=self.completion_mask, scale=scale)  # [Ng*G, H, C, dv]
        out_c = out_c.unflatten(0, (ng, G)).transpose(1, 2).flatten(2, 3)  # [Ng, H, G*C, dv]
        return torch.cat([out_p, out_c], dim=2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Padding | SharedPrefix | None,
           scale: float) -> torch.Tensor:
    """q/k [B, H, T, d], v [B, H, T, dv] (dv <= d) -> [B, H, T, dv]; see the module docstring for `mask`."""
    if isinstance(mask, SharedPrefix):
        return mask.attend(q, k, v, scale)
    if isinstance(mask, Padding):
        mask = mask.attn_mask
    return _sdpa(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """F.scaled_dot_product_attention, with v zero-padded to q's head dim when narrower (MLA: equal head dims let
    SDPA use its fused flash kernel; the padding's output columns are dropped), in fp32 under CPU autocast: torch's
    CPU flash attention is no faster in bf16 (its backward is slower: 51 vs 43 ms for GRPO's completion shapes on a
    Zen 4 EPYC) and fp32 keeps the softmax exact. The output stays fp32; the next projection casts it back under
    autocast."""
    dv = v.shape[-1]
    if dv < q.shape[-1]:
        v = F.pad(v, (0, q.shape[-1] - dv))
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)[..., :dv]
    return F.scaled_dot_product_attention(q, k, v, **kw)[..., :dv]


# -- the native kernel (csrc/shared_prefix_attention.c) -----------------------------------------------------------

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
    @once_differentiable  # the C backward builds no graph: a double backward raises instead of being wrong
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


def native_shared_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                                   shape: tuple[int, int, int], scale: float) -> torch.Tensor | None:
    """Differentiable attention over shared-prefix rows (csrc/shared_prefix_attention.c; layout and masks:
    attention.SharedPrefix): q/k [B, H, L, d], v [B, H, L, dv] (any strides with a contiguous last dim), valid
    [B, P] uint8, shape (P, G, C) -> [B, H, L, dv]. None when the kernel cannot take them (not CPU fp32, head dims
    not multiples of 16, k/v with other head counts than q). Each thread holds the scores of one prompt or completion,
    max(P, C) x (P + C) floats (twice in the backward): flash attention's memory is O(block), but at these sizes the
    SDPA path's explicit mask is larger. MemoryError when that cannot be allocated."""
    lib = native._usable(q, k, v)
    p, g, c = shape
    if (lib is None or q.dim() != 4 or v.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]
            or min(p, g, c) < 0 or q.shape[2] != p + g * c or q.shape[-1] < 16 or v.shape[-1] < 16
            or q.shape[-1] % 16 or v.shape[-1] % 16 or any(t.stride(-1) != 1 for t in (q, k, v))
            or valid.dtype != torch.uint8 or valid.device.type != "cpu" or not valid.is_contiguous()
            or valid.shape != (q.shape[0], p)):
        return None
    return _SharedPrefixAttention.apply(q, k, v, valid, shape, scale, lib)
