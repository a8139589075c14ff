"""Paged attention kernels against plain causal attention on random tensors (no model involved)."""
from __future__ import annotations

import math

import pytest
import torch

from r1kit.models.context import AttentionContext
from r1kit.ops import paged_attention
from r1kit.ops.paged_attention import BATCHED_MAX_NEW, gqa_paged_attention, mla_paged_attention

BLOCK = 4


def make_ctx(cached: list[int], new: list[int], tables: list[list[int]]) -> AttentionContext:
    seq_lens = [c + n for c, n in zip(cached, new)]
    slots = []
    for c, n, t in zip(cached, new, tables):
        slots += [t[j // BLOCK] * BLOCK + j % BLOCK for j in range(c, c + n)]
    width = max(len(t) for t in tables)
    qsl = [0]
    for n in new:
        qsl.append(qsl[-1] + n)
    return AttentionContext(
        query_start_loc=torch.tensor(qsl), seq_lens=torch.tensor(seq_lens), slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]), query_lens=list(new),
        seq_lens_list=seq_lens, block_size=BLOCK)


def scattered_tables(lengths: list[int], num_blocks: int, gen: torch.Generator) -> list[list[int]]:
    """Disjoint, shuffled block ids for each sequence so that layout bugs show."""
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    out = []
    for L in lengths:
        k = math.ceil(L / BLOCK)
        out.append(perm[:k])
        perm = perm[k:]
    return out


def causal_ref(q, k, v, scale):
    """q [L, H, D], k/v [L, H, D] full sequence -> [L, H, Dv]."""
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    L = q.shape[0]
    scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).float()


# (cached prefix, tokens in step 2) per sequence: decode rows, prefill-after-prefix chunks, and fresh prefills.
# "mixed" chunks are short (batched one row per token); "long" chunks exceed BATCHED_MAX_NEW (per-sequence path).
CASES = {
    "decode": [(5, 1), (9, 1), (1, 1), (16, 1)],
    "mixed": [(7, 1), (0, 6), (8, 5), (3, 1), (12, 3)],
    "long": [(7, 1), (0, 12), (9, 10), (2, 3)],  # as many batched rows as sequences, yet not all decode
}


def test_long_case_exercises_both_paths():
    assert all(n <= BATCHED_MAX_NEW for _, n in CASES["mixed"])
    assert any(n > BATCHED_MAX_NEW for _, n in CASES["long"]) and any(n == 1 for _, n in CASES["long"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_gqa_paged_attention_matches_causal_attention(case, cpu_kernels):
    gen = torch.Generator().manual_seed(0)
    Hq, Hkv, D = 6, 2, 8
    cached, new = zip(*CASES[case])
    lengths = [c + n for c, n in CASES[case]]
    tables = scattered_tables(lengths, 40, gen)
    cache = torch.zeros(40, BLOCK, 2, Hkv, D)
    seqs = [(torch.randn(L, Hq, D, generator=gen), torch.randn(L, Hkv, D, generator=gen),
             torch.randn(L, Hkv, D, generator=gen)) for L in lengths]
    scale = D ** -0.5
    # Step 1 writes each cached prefix (as a prefill); step 2 brings the new tokens.
    pre = [b for b, c in enumerate(cached) if c > 0]
    ctx1 = make_ctx([0] * len(pre), [cached[b] for b in pre], [tables[b] for b in pre])
    cat = lambda i, sl: torch.cat([seqs[b][i][sl(b)] for b in range(len(seqs)) if sl(b).stop > sl(b).start])
    first = lambda b: slice(0, cached[b])
    gqa_paged_attention(cat(0, first), cat(1, first), cat(2, first), cache, ctx1, scale)
    ctx2 = make_ctx(list(cached), list(new), tables)
    second = lambda b: slice(cached[b], lengths[b])
    out = gqa_paged_attention(cat(0, second), cat(1, second), cat(2, second), cache, ctx2, scale)
    s = 0
    for b, (q, k, v) in enumerate(seqs):
        ref = causal_ref(q, k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1), scale)
        torch.testing.assert_close(out[s:s + new[b]], ref[cached[b]:], atol=1e-5, rtol=1e-4)
        s += new[b]


@pytest.mark.parametrize("case", sorted(CASES))
def test_mla_paged_attention_matches_decompressed_causal_attention(case, cpu_kernels):
    gen = torch.Generator().manual_seed(1)
    H, nope, rope, R, dv = 4, 8, 4, 16, 6
    cached, new = zip(*CASES[case])
    lengths = [c + n for c, n in CASES[case]]
    tables = scattered_tables(lengths, 40, gen)
    cache = torch.zeros(40, BLOCK, R + rope)
    w_uk, w_uv = torch.randn(H, nope, R, generator=gen) / 4, torch.randn(H, dv, R, generator=gen) / 4
    seqs = [(torch.randn(L, H, nope, generator=gen), torch.randn(L, H, rope, generator=gen),
             torch.randn(L, R, generator=gen), torch.randn(L, rope, generator=gen)) for L in lengths]
    scale = (nope + rope) ** -0.5

    def run(sl, cached_, new_, tabs, idx):
        parts = [torch.cat([seqs[b][i][sl(b)] for b in idx]) for i in range(4)]
        return mla_paged_attention(*parts, cache, make_ctx(cached_, new_, tabs), w_uk, w_uv, scale)

    pre = [b for b, c in enumerate(cached) if c > 0]
    run(lambda b: slice(0, cached[b]), [0] * len(pre), [cached[b] for b in pre], [tables[b] for b in pre], pre)
    out = run(lambda b: slice(cached[b], lengths[b]), list(cached), list(new), tables, range(len(seqs)))
    s = 0
    for b, (qn, qp, c, kp) in enumerate(seqs):
        k = torch.cat([torch.einsum("lr,hnr->lhn", c, w_uk), kp[:, None].expand(-1, H, -1)], -1)
        v = torch.einsum("lr,hvr->lhv", c, w_uv)
        ref = causal_ref(torch.cat([qn, qp], -1), k, v, scale)
        torch.testing.assert_close(out[s:s + new[b]], ref[cached[b]:], atol=1e-5, rtol=1e-4)
        s += new[b]


def test_paged_attention_writes_new_tokens_at_their_slots():
    cache = torch.zeros(8, BLOCK, 2, 1, 2)
    ctx = make_ctx([0], [3], [[5]])
    k, v = torch.ones(3, 1, 2), 2 * torch.ones(3, 1, 2)
    gqa_paged_attention(torch.randn(3, 1, 2), k, v, cache, ctx, 1.0)
    assert torch.equal(cache[5, :3, 0], k) and torch.equal(cache[5, :3, 1], v)
    assert cache[5, 3].abs().sum() == 0 and cache[:5].abs().sum() == 0


def test_layers_sharing_one_context_each_attend_over_their_own_cache():
    """The gather index and mask are built by the first call and cached on the context; a second layer with
    another cache and other inputs must still get its own exact attention (decode rows and a short chunk)."""
    gen = torch.Generator().manual_seed(2)
    H, nope, rope, R, dv = 2, 4, 2, 6, 3
    cached, new = [5, 3, 6], [1, 4, 1]
    lengths = [c + n for c, n in zip(cached, new)]
    tables = scattered_tables(lengths, 20, gen)
    w_uk, w_uv = torch.randn(H, nope, R, generator=gen), torch.randn(H, dv, R, generator=gen)
    scale = 0.5
    layers = []
    for _ in range(2):
        seqs = [(torch.randn(L, H, nope, generator=gen), torch.randn(L, H, rope, generator=gen),
                 torch.randn(L, R, generator=gen), torch.randn(L, rope, generator=gen)) for L in lengths]
        cache = torch.zeros(20, BLOCK, R + rope)
        parts = [torch.cat([x[i][:c] for x, c in zip(seqs, cached)]) for i in range(4)]
        mla_paged_attention(*parts, cache, make_ctx([0] * 3, cached, tables), w_uk, w_uv, scale)
        layers.append((seqs, cache))
    ctx = make_ctx(cached, new, tables)
    for seqs, cache in layers:  # the same ctx object, as in a model forward
        parts = [torch.cat([x[i][c:] for x, c in zip(seqs, cached)]) for i in range(4)]
        out = mla_paged_attention(*parts, cache, ctx, w_uk, w_uv, scale)
        s = 0
        for b, (qn, qp, c, kp) in enumerate(seqs):
            k = torch.cat([torch.einsum("lr,hnr->lhn", c, w_uk), kp[:, None].expand(-1, H, -1)], -1)
            ref = causal_ref(torch.cat([qn, qp], -1), k, torch.einsum("lr,hvr->lhv", c, w_uv), scale)
            torch.testing.assert_close(out[s:s + new[b]], ref[cached[b]:], atol=1e-5, rtol=1e-4)
            s += new[b]
    assert "paged_plan" in ctx.derived


def test_short_chunks_take_the_per_sequence_path_when_their_gather_would_be_too_large(monkeypatch):
    # budget = 2x the decode rows' padded gather (2 rows x 8 keys): every chunk of "mixed" exceeds it
    monkeypatch.setattr(paged_attention, "BATCHED_MIN_KEYS", 0)
    cached, new = zip(*CASES["mixed"])
    tables = scattered_tables([c + n for c, n in CASES["mixed"]], 40, torch.Generator().manual_seed(0))
    plan = paged_attention._plan(make_ctx(list(cached), list(new), tables), "cpu")
    assert plan.pre == [b for b, n in enumerate(new) if n > 1] and plan.mask.shape[0] == new.count(1)
    test_gqa_paged_attention_matches_causal_attention("mixed", "native")
    test_mla_paged_attention_matches_decompressed_causal_attention("mixed", "native")
