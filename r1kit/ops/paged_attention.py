"""mla_paged_attention, gqa_paged_attention: attention over a paged KV cache, what the model layers call when the
engine passes an AttentionContext.

Both functions first write the new tokens' keys/values into the cache at `ctx.slot_mapping`, then attend causally
over each sequence's whole context (cached prefix + new tokens); see r1kit/models/context.py for the layout.

Two paths:
- batched (decode: a sequence bringing one new token; also short chunks of at most BATCHED_MAX_NEW tokens, each
  token a row of its own with its causal context length): all such rows are batched. Their blocks are gathered
  through `block_tables` into one [N, L_max, ...] tensor, keys past each row's length are masked, and one
  batched attention runs over it (GQA: a fused SDPA call on strided K/V views, query heads grouped by kv head; MLA:
  two batched matmuls over the latent); softmax runs in fp32. This batched core is an op of its own ("mla_decode",
  "gqa_decode"): the above is its torch reference, and the cpu backend runs the C kernel of
  r1kit/ops/cpu/csrc/paged_decode.c instead (an fp32 or a bf16 cache, computed in fp32), which reads each row's
  blocks in place: no padded copy, no mask. The plan (which rows, their block tables, lengths and mask) is the
  same in every layer: the first layer builds it and keeps it in `ctx.derived`.
- prefill / chunked prefill (more new tokens): one scaled_dot_product_attention per sequence, with the causal
  diagonal shifted by the cached prefix length.
A mixed step (decode tokens and prefill chunks together) uses both.

MLA (docs/architecture.md, "MLA"): the cache holds only the latent [c_kv | k_pe] (kv_lora_rank + rope values per
token).
Decode uses weight absorption: q_nope is folded through W_UK into the latent space, attention runs over the
576-wide latent like multi-query attention, and W_UV maps the latent output to per-head values -- per-head K/V of
cached tokens are never built. Prefill decompresses the context with W_UK / W_UV (compute-bound, fewer FLOPs for
short contexts per query).

The cache must be zero-initialised: masked padding slots are multiplied by zero probabilities, and garbage NaNs
from uninitialised memory would poison them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from r1kit.ops import dispatch

if TYPE_CHECKING:  # the engine's step metadata (the ops do not depend on the model package)
    from r1kit.models.context import AttentionContext


BATCHED_MAX_NEW = 8  # chunks of at most this many new tokens may take the batched path, one row per token
BATCHED_MIN_KEYS = 1 << 18  # ... as long as the padded gather stays within 2x the decode rows' gather or this many keys


@dataclass
class Plan:
    """How one step's flat batch splits into the two paths; the same for every layer, so built once per step.

    The batched path has one row per query token: token i of a sequence with n new tokens and context length
    seq_len is a row whose keys are the sequence's first seq_len - n + i + 1 tokens (causal). Decode tokens are
    such rows, and so are short chunks (the samples of an n > 1 request joining after the shared prompt, forced
    thinking-end tokens): their context is gathered once per token, which beats a per-sequence loop."""
    pre: list[int]  # sequences with more new tokens (per-sequence prefill path)
    starts: list[int]  # first flat row of each sequence
    rows: torch.Tensor | None  # flat rows of the batched tokens; None when every row is one
    tables: torch.Tensor | None  # [N, nblk] block ids of each batched row's sequence
    lens: torch.Tensor | None  # [N] keys visible to each batched row
    mask: torch.Tensor | None  # [N, nblk * block_size] bool: key j is visible to row r
    bias: dict  # dtype -> [N, 1, nblk * block_size] additive mask (0 / -inf)


def _plan(ctx: AttentionContext, device) -> Plan:
    plan = ctx.derived.get("paged_plan")
    if plan is not None:
        return plan
    starts, s = [], 0
    for n in ctx.query_lens:
        starts.append(s)
        s += n
    qlens, lens_list = ctx.query_lens, ctx.seq_lens_list
    dec = [b for b, n in enumerate(qlens) if n == 1]
    batched = set(dec)
    n_rows, width = len(dec), max((lens_list[b] for b in dec), default=0)
    budget = max(2 * n_rows * width, BATCHED_MIN_KEYS)  # padded key slots the batched gather may hold
    for b, n in enumerate(qlens):  # short chunks join while the duplicated context stays small
        if 1 < n <= BATCHED_MAX_NEW and (n_rows + n) * max(width, lens_list[b]) <= budget:
            batched.add(b)
            n_rows, width = n_rows + n, max(width, lens_list[b])
    pre, row_seq, row_ids, row_lens = [], [], [], []
    for b, (n, seq_len) in enumerate(zip(qlens, lens_list)):
        if b not in batched:
            pre.append(b)
            continue
        for i in range(n):
            row_seq.append(b)
            row_ids.append(starts[b] + i)
            row_lens.append(seq_len - n + i + 1)
    rows = tables = lens = mask = None
    if row_ids:
        bs = ctx.block_size
        nblk = (max(row_lens) + bs - 1) // bs
        if not pre and len(row_ids) == ctx.num_seqs:  # decode only: one row per sequence
            tables, lens = ctx.block_tables[:, :nblk], ctx.seq_lens
        else:
            tables = ctx.block_tables[torch.tensor(row_seq, device=device), :nblk]
            lens = torch.tensor(row_lens, device=device)
        if len(row_ids) != s:
            rows = torch.tensor(row_ids, device=device)
        mask = torch.arange(nblk * bs, device=device)[None, :] < lens[:, None]  # [N, L]
    plan = Plan(pre, starts, rows, tables, lens, mask, {})
    ctx.derived["paged_plan"] = plan
    return plan


def _bias(plan: Plan, dtype: torch.dtype) -> torch.Tensor:
    """The batched rows' mask as an additive bias [N, 1, L] in `dtype` (0 for visible keys, -inf otherwise)."""
    if dtype not in plan.bias:
        m = plan.mask[:, None, :]
        plan.bias[dtype] = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
    return plan.bias[dtype]


def _gather(cache: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Each batched row's context as one padded tensor [N, L_max, *token_shape] (one index_select: whole blocks
    are copied, several times faster on CPU than advanced indexing)."""
    N, L = plan.mask.shape
    return cache.index_select(0, plan.tables.reshape(-1)).view(N, L, *cache.shape[2:])


def _context(cache: torch.Tensor, ctx: AttentionContext, b: int) -> torch.Tensor:
    """The whole context of sequence b read from the cache: [L, *token_shape]."""
    seq_len = ctx.seq_lens_list[b]
    nblk = (seq_len + ctx.block_size - 1) // ctx.block_size
    return cache.index_select(0, ctx.block_tables[b, :nblk]).reshape(-1, *cache.shape[2:])[:seq_len]


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


def _place(out: torch.Tensor, o: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The batched path's output `o` as rows `rows` of `out` (rows None: it is all of out)."""
    if rows is None:
        return o
    out[rows] = o
    return out


@dispatch.register("gqa_decode", "torch")
def _gqa_decode_reference(q: torch.Tensor, cache: torch.Tensor, plan: Plan, scale: float) -> torch.Tensor:
    """The batched rows: q [N, Hq, D] (the cache's dtype), cache [num_blocks, block_size, 2, Hkv, D] -> [N, Hkv,
    Hq/Hkv, D]: one fused SDPA call over the gathered context (softmax accumulated in fp32, strided K/V views)."""
    n, hq, d = q.shape
    kv = _gather(cache, plan)  # [N, L, 2, Hkv, D]: the one copy of the cached K/V
    kk, vv = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [N, Hkv, L, D] strided views
    qg = q.view(n, kk.shape[1], hq // kk.shape[1], d)  # query heads grouped by their kv head
    return F.scaled_dot_product_attention(qg, kk, vv, attn_mask=plan.mask[:, None, None, :], scale=scale)


@dispatch.register("mla_decode", "torch")
def _mla_decode_reference(q: torch.Tensor, cache: torch.Tensor, plan: Plan, r: int, scale: float) -> torch.Tensor:
    """The batched rows: absorbed queries q [N, H, R + rope] (the cache's dtype), cache [num_blocks, block_size,
    R + rope] -> [N, H, R]: multi-query attention over the gathered latents, the first R values of each the value."""
    latent = _gather(cache, plan)  # [N, L, R + rope]
    # scale and padding mask fused into the matmul: [N, H, L]
    scores = torch.baddbmm(_bias(plan, cache.dtype), q, latent.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores.float(), dim=-1).to(latent.dtype)
    return torch.bmm(probs, latent[:, :, :r])


def gqa_paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
                        ctx: AttentionContext, scale: float) -> torch.Tensor:
    """Grouped-query attention. q [T, Hq, D], k/v [T, Hkv, D], cache [num_blocks, block_size, 2, Hkv, D]
    -> [T, Hq, D]."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    flat = cache.view(-1, 2, Hkv, D)
    flat[ctx.slot_mapping] = torch.stack([k, v], dim=1).to(cache.dtype)
    out = torch.empty(T, Hq, v.shape[-1], dtype=q.dtype, device=q.device)
    plan = _plan(ctx, q.device)
    pre, starts, rows = plan.pre, plan.starts, plan.rows
    if plan.mask is not None:
        qd = (q if rows is None else q[rows]).to(cache.dtype)  # [N, Hq, D]
        o = dispatch.call("gqa_decode", qd, cache, plan, scale)
        out = _place(out, o.reshape(qd.shape[0], Hq, -1).to(q.dtype), rows)
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
    plan = _plan(ctx, q_nope.device)
    pre, starts, rows = plan.pre, plan.starts, plan.rows
    if plan.mask is not None:
        qn = q_nope if rows is None else q_nope[rows]
        qp = q_pe if rows is None else q_pe[rows]
        # head-major batched matmuls ([H, N, .] views, no copies): absorb W_UK, then [q_lat | q_pe]
        q_lat = torch.bmm(qn.transpose(0, 1), w_uk)  # [H, N, R]
        q_full = torch.cat([q_lat, qp.transpose(0, 1)], dim=-1).to(cache.dtype).transpose(0, 1)  # [N, H, R + rope]
        o_lat = dispatch.call("mla_decode", q_full, cache, plan, R, scale)  # [N, H, R]
        o = torch.bmm(o_lat.transpose(0, 1).to(w_uv.dtype), w_uv.transpose(1, 2))  # absorb W_UV: [H, N, v]
        out = _place(out, o.transpose(0, 1).to(q_nope.dtype), rows)  # [N, H, v] rows of out
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
