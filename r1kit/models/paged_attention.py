"""Attention over a paged KV cache: the two kernels the model layers call when the engine passes an AttentionContext.

Both functions first write the new tokens' keys/values into the cache at `ctx.slot_mapping`, then attend causally
over each sequence's whole context (cached prefix + new tokens); see r1kit/models/context.py for the layout.

Two paths:
- decode (a sequence bringing one new token): all such sequences are batched. Their blocks are gathered through
  `block_tables` into one [B, L_max, ...] tensor, positions past `seq_lens` are masked, and one batched attention
  runs over it (GQA: a fused SDPA call on strided K/V views, query heads grouped by kv head; MLA: two batched
  matmuls over the latent); softmax runs in fp32.
- prefill / chunked prefill (several new tokens): one scaled_dot_product_attention per sequence, with the causal
  diagonal shifted by the cached prefix length.
A mixed step (decode tokens and prefill chunks together) uses both.

MLA (reference.md section 1): the cache holds only the latent [c_kv | k_pe] (kv_lora_rank + rope values per token).
Decode uses weight absorption: q_nope is folded through W_UK into the latent space, attention runs over the
576-wide latent like multi-query attention, and W_UV maps the latent output to per-head values -- per-head K/V of
cached tokens are never built. Prefill decompresses the context with W_UK / W_UV (compute-bound, fewer FLOPs for
short contexts per query).

The cache must be zero-initialised: masked padding slots are multiplied by zero probabilities, and garbage NaNs
from uninitialised memory would poison them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from r1kit.models.context import AttentionContext


def _split(ctx: AttentionContext) -> tuple[list[int], list[int]]:
    """Sequence indices with one new token (batched decode path) and with several (per-sequence prefill path)."""
    dec = [b for b, n in enumerate(ctx.query_lens) if n == 1]
    pre = [b for b, n in enumerate(ctx.query_lens) if n != 1]
    return dec, pre


def _starts(ctx: AttentionContext) -> list[int]:
    out, s = [], 0
    for n in ctx.query_lens:
        out.append(s)
        s += n
    return out


def _gather(cache: torch.Tensor, ctx: AttentionContext, seqs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of `seqs` as one padded tensor [B, L_max, *token_shape] plus the valid-key mask [B, L_max]."""
    block_size = ctx.block_size
    max_len = max(ctx.seq_lens_list[b] for b in seqs)
    nblk = (max_len + block_size - 1) // block_size
    idx = torch.tensor(seqs, device=cache.device) if len(seqs) != ctx.num_seqs else None
    tables = ctx.block_tables[:, :nblk] if idx is None else ctx.block_tables[idx, :nblk]
    lens = ctx.seq_lens if idx is None else ctx.seq_lens[idx]
    kv = cache[tables]  # [B, nblk, block_size, *token_shape]
    kv = kv.reshape(len(seqs), nblk * block_size, *cache.shape[2:])
    mask = torch.arange(nblk * block_size, device=cache.device)[None, :] < lens[:, None]  # [B, L]
    return kv, mask


def _context(cache: torch.Tensor, ctx: AttentionContext, b: int) -> torch.Tensor:
    """The whole context of sequence b read from the cache: [L, *token_shape]."""
    seq_len = ctx.seq_lens_list[b]
    nblk = (seq_len + ctx.block_size - 1) // ctx.block_size
    return cache[ctx.block_tables[b, :nblk]].reshape(-1, *cache.shape[2:])[:seq_len]


def _causal_mask(n_new: int, seq_len: int, device) -> torch.Tensor | None:
    """Bool mask [n_new, seq_len]: new token i sits at position seq_len - n_new + i and sees keys up to it."""
    return torch.ones(n_new, seq_len, dtype=torch.bool, device=device).tril(diagonal=seq_len - n_new)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: int, scale: float) -> torch.Tensor:
    """q [n, H, D], k [L, H, D], v [L, H, Dv] -> [n, H, Dv], causal with the prefix offset."""
    n = q.shape[0]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    if n == seq_len:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=_causal_mask(n, seq_len, q.device), scale=scale)
    return out.transpose(0, 1)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 softmax of scores [B, ..., L] over keys allowed by mask [B, L]."""
    shape = (mask.shape[0],) + (1,) * (scores.dim() - 2) + (mask.shape[1],)
    scores = scores.float().masked_fill(~mask.view(shape), float("-inf"))
    return torch.softmax(scores, dim=-1)


def gqa_paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
                        ctx: AttentionContext, scale: float) -> torch.Tensor:
    """Grouped-query attention. q [T, Hq, D], k/v [T, Hkv, D], cache [num_blocks, block_size, 2, Hkv, D] -> [T, Hq, D]."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    flat = cache.view(-1, 2, Hkv, D)
    flat[ctx.slot_mapping] = torch.stack([k, v], dim=1).to(cache.dtype)
    out = torch.empty(T, Hq, v.shape[-1], dtype=q.dtype, device=q.device)
    dec, pre = _split(ctx)
    starts = _starts(ctx)
    if dec:
        rows = torch.tensor([starts[b] for b in dec], device=q.device) if len(dec) != T else None
        qd = q if rows is None else q[rows]  # [B, Hq, D]
        kv, mask = _gather(cache, ctx, dec)  # [B, L, 2, Hkv, D]: the one copy of the cached K/V
        kk, vv = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, Hkv, L, D] strided views
        qg = qd.view(len(dec), Hkv, group, D).to(cache.dtype)  # query heads grouped by their kv head
        # one batched attention (fused kernel: softmax accumulated in fp32, strided K/V read without a copy)
        o = F.scaled_dot_product_attention(qg, kk, vv, attn_mask=mask[:, None, None, :], scale=scale)
        o = o.reshape(len(dec), Hq, -1).to(q.dtype)
        if rows is None:
            out = o
        else:
            out[rows] = o
    for b in pre:
        s, n, seq_len = starts[b], ctx.query_lens[b], ctx.seq_lens_list[b]
        if n == seq_len:  # nothing cached: the new keys are the whole context
            kb, vb = k[s:s + n], v[s:s + n]
        else:
            kvb = _context(cache, ctx, b).to(q.dtype)
            kb, vb = kvb[:, 0], kvb[:, 1]
        if group > 1:
            kb, vb = kb.repeat_interleave(group, dim=1), vb.repeat_interleave(group, dim=1)
        out[s:s + n] = _sdpa(q[s:s + n], kb, vb, seq_len, scale)
    return out


def mla_paged_attention(q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                        cache: torch.Tensor, ctx: AttentionContext, w_uk: torch.Tensor, w_uv: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Multi-head latent attention over a latent cache.

    q_nope [T, H, nope], q_pe [T, H, rope], c_kv [T, R] (normalised), k_pe [T, rope] (roped),
    cache [num_blocks, block_size, R + rope], w_uk [H, nope, R], w_uv [H, v, R] -> [T, H, v].
    """
    T, H, _ = q_nope.shape
    R = c_kv.shape[-1]
    flat = cache.view(-1, cache.shape[-1])
    flat[ctx.slot_mapping] = torch.cat([c_kv, k_pe], dim=-1).to(cache.dtype)
    out = torch.empty(T, H, w_uv.shape[1], dtype=q_nope.dtype, device=q_nope.device)
    dec, pre = _split(ctx)
    starts = _starts(ctx)
    if dec:
        rows = torch.tensor([starts[b] for b in dec], device=q_nope.device) if len(dec) != T else None
        qn = q_nope if rows is None else q_nope[rows]
        qp = q_pe if rows is None else q_pe[rows]
        q_lat = torch.einsum("bhn,hnr->bhr", qn, w_uk)  # absorb W_UK: [B, H, R]
        q_full = torch.cat([q_lat, qp], dim=-1).to(cache.dtype)  # [B, H, R + rope]
        latent, mask = _gather(cache, ctx, dec)  # [B, L, R + rope]
        scores = torch.matmul(q_full, latent.transpose(1, 2)) * scale  # [B, H, L], MQA over the latent
        probs = _masked_softmax(scores, mask)
        o_lat = torch.matmul(probs.to(latent.dtype), latent[:, :, :R])  # [B, H, R]
        o = torch.einsum("bhr,hvr->bhv", o_lat.to(w_uv.dtype), w_uv).to(q_nope.dtype)  # absorb W_UV
        if rows is None:
            out = o
        else:
            out[rows] = o
    for b in pre:
        s, n, seq_len = starts[b], ctx.query_lens[b], ctx.seq_lens_list[b]
        if n == seq_len:
            cb, kpe = c_kv[s:s + n], k_pe[s:s + n]
        else:
            lat = _context(cache, ctx, b).to(q_nope.dtype)
            cb, kpe = lat[:, :R], lat[:, R:]
        k_nope = torch.einsum("lr,hnr->lhn", cb, w_uk)  # decompress: [L, H, nope]
        vb = torch.einsum("lr,hvr->lhv", cb, w_uv)  # [L, H, v]
        kb = torch.cat([k_nope, kpe[:, None, :].expand(-1, H, -1)], dim=-1)
        qb = torch.cat([q_nope[s:s + n], q_pe[s:s + n]], dim=-1)
        out[s:s + n] = _sdpa(qb, kb, vb, seq_len, scale)
    return out
