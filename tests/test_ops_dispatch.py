"""The backend dispatch (r1kit/ops/dispatch.py): forcing each backend for each op gives the float64 reference
result and really runs that backend; an unavailable backend falls back to the torch reference with one warning."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from r1kit import ops
from r1kit.models.context import AttentionContext
from r1kit.ops import dispatch
from r1kit.ops.cpu import library


def _softmax_attention(q, k, v, scale, visible):
    """float64 attention of q [Tq, H, d] over k [Tk, H, d], v [Tk, H, dv]; visible [Tq, Tk] bool."""
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.double())


def _experts(x, idx, w, gate_up, down):
    """out[n] = sum_k w[n,k] * down[e] @ (silu(gate[e] @ x[n]) * (up[e] @ x[n])), token by token, float64."""
    i = down.shape[2]
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], dtype=torch.float64)
        for slot in range(idx.shape[1]):
            e = int(idx[n, slot])
            h = gate_up[e].double() @ x[n].double()
            acc = acc + w[n, slot].double() * (down[e].double() @ (F.silu(h[:i]) * h[i:]))
        rows.append(acc)
    return torch.stack(rows)


def _decode_ctx(lens: list[int], bs: int, g: torch.Generator) -> AttentionContext:
    """One decode step: sequence b brings its token number lens[b] (its context is lens[b] tokens), scattered
    blocks."""
    nblk = [-(-n // bs) for n in lens]
    perm = torch.randperm(sum(nblk) + 3, generator=g).tolist()
    tables, at = [], 0
    for n in nblk:
        tables.append(perm[at:at + n])
        at += n
    width = max(nblk)
    slots = [t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lens)]
    return AttentionContext(query_start_loc=torch.arange(len(lens) + 1), seq_lens=torch.tensor(lens),
                            slot_mapping=torch.tensor(slots),
                            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
                            query_lens=[1] * len(lens), seq_lens_list=list(lens), block_size=bs)


def _context_rows(cache: torch.Tensor, ctx: AttentionContext, b: int) -> torch.Tensor:
    """Sequence b's tokens read slot by slot from the cache: [L, *token_shape]."""
    bs, n = ctx.block_size, ctx.seq_lens_list[b]
    flat = cache.view(-1, *cache.shape[2:])
    return flat[torch.tensor([int(ctx.block_tables[b, j // bs]) * bs + j % bs for j in range(n)])]


# Each case: (run the op, float64 reference). Sizes are ones the cpu backend takes (fp32, head dims multiples of 16,
# few rows per expert without gradients, inside frozen_weights() for linear).
def case_linear(g):
    x, w, b = torch.randn(6, 48, generator=g), torch.randn(40, 48, generator=g), torch.randn(40, generator=g)

    def run():
        with torch.no_grad(), ops.frozen_weights():
            return ops.linear(x, w, b)
    return run, x.double() @ w.double().T + b.double()


def case_rms_norm(g):
    x, w = torch.randn(7, 40, generator=g), torch.randn(40, generator=g)
    x64 = x.double()
    return lambda: ops.rms_norm(x, w, 1e-6), x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()


def case_rope(g):
    x = torch.randn(5, 3, 16, generator=g)  # [T, H, d], pairs rotated (DeepSeek's layout), written as halves
    cos, sin = torch.randn(5, 1, 8, generator=g), torch.randn(5, 1, 8, generator=g)
    ev, od, c, s = x[..., 0::2].double(), x[..., 1::2].double(), cos.double(), sin.double()

    def run():
        with torch.no_grad():
            return ops.rope(x, cos, sin, True)
    return run, torch.cat([ev * c - od * s, od * c + ev * s], dim=-1)


def case_route(g):
    scores, bias = torch.rand(20, 16, generator=g), 0.05 * torch.randn(16, generator=g)
    k, groups, topk_groups = 4, 4, 2
    idx, w = [], []
    for row in scores.double():  # group score = the sum of its top-2 biased choices; best topk_groups groups kept
        choice = row + bias.double()
        kept = choice.view(groups, -1).topk(2, dim=-1)[0].sum(-1).argsort(descending=True)[:topk_groups]
        allowed = torch.zeros(16, dtype=torch.bool).view(groups, -1)
        allowed[kept] = True
        top = choice.masked_fill(~allowed.flatten(), float("-inf")).argsort(descending=True)[:k].sort()[0]
        idx.append(top)
        w.append(row[top] / row[top].sum() * 2.5)

    def run():
        i, wt = ops.route(scores, bias, k, groups, topk_groups, True, 2.5)
        order = i.argsort(-1)  # the backends may list the chosen experts in any order
        return torch.cat([i.gather(1, order).double(), wt.gather(1, order).double()], dim=1)
    return run, torch.cat([torch.stack(idx).double(), torch.stack(w)], dim=1)


def _expert_inputs(g, n):
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(n)])
    return (torch.randn(n, 32, generator=g), idx, torch.rand(n, 3, generator=g),
            0.3 * torch.randn(6, 48, 32, generator=g), 0.3 * torch.randn(6, 32, 24, generator=g))


def case_routed_swiglu(g):
    decode, train = _expert_inputs(g, 9), _expert_inputs(g, 40)
    x, idx, w, gate_up, down = train
    upstream = torch.randn(40, 32, generator=g)
    leaves64 = [t.double().requires_grad_() for t in (x, w, gate_up, down)]
    _experts(leaves64[0], idx, *leaves64[1:]).backward(upstream.double())

    def run():
        with torch.no_grad():
            a = ops.routed_swiglu(*decode)
        leaves = [t.clone().requires_grad_() for t in (x, w, gate_up, down)]
        out = ops.routed_swiglu(leaves[0], idx, *leaves[1:])
        out.backward(upstream)
        return torch.cat([a.flatten(), out.detach().flatten()] + [t.grad.flatten() for t in leaves]).double()
    ref = [_experts(*decode).flatten(), _experts(x, idx, w, gate_up, down).flatten()]
    return run, torch.cat(ref + [t.grad.flatten() for t in leaves64])


def case_attention(g):
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g) for _ in range(3))  # [B, H, T, d]
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    ref = torch.stack([_softmax_attention(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), 0.25,
                                          causal).transpose(0, 1) for b in range(2)])
    return lambda: ops.attend(q, k, v, None, 0.25), ref


def case_shared_prefix_attention(g):
    P, G, C, H, d = 5, 2, 4, 2, 16
    valid = torch.ones(2, P, dtype=torch.bool)
    valid[1, :2] = False  # a left-padded prompt
    layout = ops.SharedPrefix(P, G, C, valid)
    q, k, v = (torch.randn(2, H, P + G * C, d, generator=g) for _ in range(3))
    visible = torch.zeros(2, P + G * C, P + G * C, dtype=torch.bool)  # each prompt / completion its own sequence
    for b in range(2):
        for t in range(P + G * C):
            if t < P:
                visible[b, t, :t + 1] = valid[b, :t + 1]
                visible[b, t, t] = True
            else:
                start = P + (t - P) // C * C
                visible[b, t, :P] = valid[b]
                visible[b, t, start:t + 1] = True
    ref = torch.stack([_softmax_attention(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), 0.3,
                                          visible[b]).transpose(0, 1) for b in range(2)])
    return lambda: layout.attend(q, k, v, 0.3), ref


def case_mla_decode(g):
    H, nope, rope, R, dv, bs = 2, 16, 16, 32, 16, 4
    ctx = _decode_ctx([1, 6, 11], bs, g)
    cache = torch.randn(16, bs, R + rope, generator=g)
    q_nope, q_pe = torch.randn(3, H, nope, generator=g), torch.randn(3, H, rope, generator=g)
    c_kv, k_pe = torch.randn(3, R, generator=g), torch.randn(3, rope, generator=g)
    w_uk, w_uv = 0.2 * torch.randn(H, nope, R, generator=g), 0.2 * torch.randn(H, dv, R, generator=g)
    written = cache.clone().view(-1, R + rope)
    written[ctx.slot_mapping] = torch.cat([c_kv, k_pe], -1)
    refs = []
    for b in range(3):
        lat = _context_rows(written.view(cache.shape), ctx, b).double()
        k = torch.cat([torch.einsum("lr,hnr->lhn", lat[:, :R], w_uk.double()),
                       lat[:, None, R:].expand(-1, H, -1)], dim=-1)
        v = torch.einsum("lr,hvr->lhv", lat[:, :R], w_uv.double())
        q = torch.cat([q_nope[b:b + 1], q_pe[b:b + 1]], dim=-1)
        refs.append(_softmax_attention(q, k, v, 0.2, torch.ones(1, len(lat), dtype=torch.bool))[0])

    def run():
        with torch.no_grad():
            return ops.mla_paged_attention(q_nope, q_pe, c_kv, k_pe, cache.clone(), ctx, w_uk, w_uv, 0.2)
    return run, torch.stack(refs)


def case_gqa_decode(g):
    hq, hkv, d, bs = 4, 2, 16, 4
    ctx = _decode_ctx([3, 9, 1], bs, g)
    cache = torch.randn(16, bs, 2, hkv, d, generator=g)
    q, k, v = torch.randn(3, hq, d, generator=g), torch.randn(3, hkv, d, generator=g), torch.randn(3, hkv, d,
                                                                                                  generator=g)
    written = cache.clone().view(-1, 2, hkv, d)
    written[ctx.slot_mapping] = torch.stack([k, v], dim=1)
    refs = []
    for b in range(3):
        kv = _context_rows(written.view(cache.shape), ctx, b).repeat_interleave(hq // hkv, dim=2)  # [L, 2, hq, d]
        refs.append(_softmax_attention(q[b:b + 1], kv[:, 0], kv[:, 1], 0.25,
                                       torch.ones(1, len(kv), dtype=torch.bool))[0])

    def run():
        with torch.no_grad():
            return ops.gqa_paged_attention(q, k, v, cache.clone(), ctx, 0.25)
    return run, torch.stack(refs)


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def test_every_op_has_a_torch_reference_and_a_dispatch_case():
    registered = dispatch.ops()
    assert all("torch" in backends for backends in registered.values())
    assert set(CASES) == set(registered)  # a new op needs a case here


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_forcing_a_backend_runs_it_and_gives_the_reference_result(op, backend):
    if backend == "cpu" and library.load() is None:
        pytest.skip("no C compiler for the native CPU kernels")
    run, ref = CASES[op](torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an available backend: no warning
        with ops.use_backend(backend), ops.trace() as ran:
            out = run()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    want = backend if backend in dispatch.ops()[op] else "torch"  # "attention" has no cpu implementation
    assert {b for o, b in ran if o == op} == {want}


def test_an_unavailable_backend_falls_back_to_the_reference_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("R1KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-cc")
    cases = {op: make(torch.Generator().manual_seed(0)) for op, make in CASES.items()}
    library.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning) as caught:
            with ops.use_backend("cpu"), ops.trace() as ran:
                outs = {op: run() for op, (run, _) in cases.items()}
        assert len(caught) == 1 and "'cpu' is unavailable" in str(caught[0].message)
        assert "no C compiler" in str(caught[0].message)
        assert {b for _, b in ran} == {"torch"}
        for op, (_, ref) in cases.items():
            torch.testing.assert_close(outs[op].double(), ref, rtol=1e-4, atol=1e-5)
    finally:
        library.load.cache_clear()


def test_r1kit_native_0_is_an_unavailable_cpu_backend_and_unknown_backends_are_refused(monkeypatch):
    monkeypatch.setenv("R1KIT_NATIVE", "0")
    library.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="R1KIT_NATIVE=0"):
            with ops.use_backend("cpu"), ops.trace() as ran:
                ops.rms_norm(torch.randn(3, 8), torch.ones(8), 1e-6)
        assert ran == [("rms_norm", "torch")]
    finally:
        library.load.cache_clear()
    with pytest.raises(ValueError, match="unknown backend 'cuda-fast'"):
        with ops.use_backend("cuda-fast"):
            pass
