"""attend: attention of the training / reference path (no KV cache): plain causal, masked, or shared-prefix groups.

Every attention layer (MLA in r1kit/models/deepseek_v3.py, GQA in llama.py) computes q, k, v in [B, H, T, d] and
calls `attend(q, k, v, mask, scale)`. `mask` is what the model forward built:
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
of the tokens of the training forward and backward. The torch reference runs two SDPA calls, the completions' keys
being the prompt's repeated G times next to each completion's own; the cpu backend runs one C kernel that reads the
row as it is (r1kit/ops/cpu/train_kernels.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1kit.ops import dispatch


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

    # The reference's masks, built when it first runs (the cpu backend needs neither)
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
        """q/k [Ng, H, L, d], v [Ng, H, L, dv] with L = P + G*C -> [Ng, H, L, dv]."""
        return dispatch.call("shared_prefix_attention", q, k, v, self, scale)


@dispatch.register("shared_prefix_attention", "torch")
def _shared_prefix_reference(q, k, v, layout: SharedPrefix, scale: float) -> torch.Tensor:
    """Two SDPA calls: the prompts, then the completions over their prompt's keys repeated G times."""
    P, G, C = layout.prefix_len, layout.group_size, layout.completion_len
    ng = q.shape[0]
    out_p = _sdpa(q[:, :, :P], k[:, :, :P], v[:, :, :P], attn_mask=layout.prefix_mask,
                  scale=scale)  # [Ng, H, P, dv]

    def completions(x: torch.Tensor) -> torch.Tensor:  # [Ng, H, G*C, d] -> [Ng*G, H, C, d]
        return x[:, :, P:].unflatten(2, (G, C)).transpose(1, 2).flatten(0, 1)

    keys = torch.cat([k[:, :, :P].repeat_interleave(G, dim=0), completions(k)], dim=2)    # [Ng*G, H, P+C, d]
    values = torch.cat([v[:, :, :P].repeat_interleave(G, dim=0), completions(v)], dim=2)
    out_c = _sdpa(completions(q), keys, values, attn_mask=layout.completion_mask, scale=scale)  # [Ng*G, H, C, dv]
    out_c = out_c.unflatten(0, (ng, G)).transpose(1, 2).flatten(2, 3)  # [Ng, H, G*C, dv]
    return torch.cat([out_p, out_c], dim=2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Padding | SharedPrefix | None,
           scale: float) -> torch.Tensor:
    """q/k [B, H, T, d], v [B, H, T, dv] (dv <= d) -> [B, H, T, dv]; see the module docstring for `mask`."""
    if isinstance(mask, SharedPrefix):
        return mask.attend(q, k, v, scale)
    return dispatch.call("attention", q, k, v, mask.attn_mask if isinstance(mask, Padding) else None, scale)


@dispatch.register("attention", "torch")
def _reference(q, k, v, attn_mask, scale):
    """Causal attention (attn_mask None) or masked by a bool [B, 1, T, T] "may attend" mask."""
    return _sdpa(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, scale=scale)


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
