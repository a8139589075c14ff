"""The cpu backend's C kernels (r1kit/ops/cpu/csrc, built by r1kit/ops/cpu/library.py) against independent float64
references, and their build: cached per machine, and a missing or failing compiler falls back with a warning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r1kit.ops import frozen, frozen_weights, routed_swiglu
from r1kit.ops.cpu import backend, kernels, library, train_kernels, weight_blocks


@pytest.fixture
def lib():
    if library.load() is None:
        pytest.skip("no C compiler for the native CPU kernels")
    return library.load()


def experts_reference(x, idx, w, gate_up, down):
    """out[n] = sum_k w[n,k] * down[e] @ (silu(gate[e] @ x[n]) * (up[e] @ x[n])), one (token, slot) at a time."""
    i = down.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for n in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[n, k])
            h = gate_up[e].double() @ x[n].double()
            out[n] += w[n, k].double() * (down[e].double() @ (F.silu(h[:i]) * h[i:]))
    return out


# D = 40 and I = 20 are not multiples of the 16-float vectors (tails); 37 tokens x 3 slots over 6 experts: expert
# 0 takes every token's first slot (37 rows: four 8-row tiles and a partial one) and expert 4 gets nothing.
@pytest.mark.parametrize("threads", [1, 2])
def test_native_routed_experts_match_a_per_token_reference(lib, threads):
    g = torch.Generator().manual_seed(0)
    n, k, e, d, i = 37, 3, 6, 40, 20
    others = torch.tensor([1, 2, 3, 5])
    idx = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), others[torch.randperm(4, generator=g)[:k - 1]]])
                       for _ in range(n)])
    w = torch.rand(n, k, generator=g)
    x = torch.randn(n, d, generator=g)
    gate_up, down = 0.3 * torch.randn(e, 2 * i, d, generator=g), 0.3 * torch.randn(e, d, i, generator=g)
    torch.set_num_threads(threads)
    try:
        out = kernels.routed_swiglu(x, idx, w, gate_up, down)
    finally:
        torch.set_num_threads(2)
    assert out is not None and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), experts_reference(x, idx, w, gate_up, down), rtol=1e-5, atol=1e-6)


def _routed_case(d, i, seed=0):
    """37 tokens x 3 slots over 6 experts: expert 0 takes every token's first slot (37 rows, more than one work
    item), expert 4 gets nothing"""
    g = torch.Generator().manual_seed(seed)
    n, k, e = 37, 3, 6
    others = torch.tensor([1, 2, 3, 5])
    idx = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), others[torch.randperm(4, generator=g)[:k - 1]]])
                       for _ in range(n)])
    w, x = torch.rand(n, k, generator=g), torch.randn(n, d, generator=g)
    return x, idx, w, 0.3 * torch.randn(e, 2 * i, d, generator=g), 0.3 * torch.randn(e, d, i, generator=g)


# Inside a frozen_weights() (a rollout) fp32 experts with 2I and D multiples of 32 run the blocked C kernel
# (through r1kit.ops.routed_swiglu) over transposed copies, made once and reused; the copies go when the scope
# closes.
@pytest.mark.parametrize("threads", [1, 2])
def test_native_routed_experts_over_blocked_weights_match_the_reference_inside_a_scope(lib, threads):
    x, idx, w, gate_up, down = _routed_case(64, 48)
    torch.set_num_threads(threads)
    try:
        with frozen_weights():
            out = routed_swiglu(x, idx, w, gate_up, down)
            assert set(frozen.current().copies) == {id(gate_up), id(down)}  # the blocked kernel ran
            blocks = frozen.current().copies[id(gate_up)][1]
            with frozen_weights():                    # nested: the same copies
                again = routed_swiglu(x, idx, w, gate_up, down)
            assert frozen.current().copies[id(gate_up)][1] is blocks
    finally:
        torch.set_num_threads(2)
    assert frozen.current() is None
    assert torch.equal(out, again)
    ref = experts_reference(x, idx, w, gate_up, down)  # fp32 rounding of sums of 48-64 products, serial per lane
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_weight_blocks_see_new_weights_in_the_next_scope_and_stay_under_the_memory_cap(lib, monkeypatch):
    x, idx, w, gate_up, down = _routed_case(32, 16, seed=3)
    with frozen_weights():
        routed_swiglu(x, idx, w, gate_up, down)
    with torch.no_grad():
        gate_up.mul_(-0.5)  # an optimizer step between two rollouts
    with frozen_weights():
        out = routed_swiglu(x, idx, w, gate_up, down)
    torch.testing.assert_close(out.double(), experts_reference(x, idx, w, gate_up, down), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(weight_blocks, "MAX_BYTES", gate_up.numel() * 4)  # room for gate_up's copy, not down's
    with frozen_weights():
        capped = routed_swiglu(x, idx, w, gate_up, down)
        assert frozen.current().copies == {}  # no copy: the unblocked kernel ran
    torch.testing.assert_close(capped, out, rtol=1e-5, atol=1e-6)


# Inside a frozen_weights(), r1kit's Linear runs CPU fp32 products without autograd over a blocked copy of its
# weight: output widths that are not multiples of the 32-column blocks (80: a partial block; 5: only one), more
# rows than one 32-row work item, leading dims, a bias; with gradients it stays nn.Linear.
@pytest.mark.parametrize("out_features, bias", [(80, True), (256, False), (5, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_inside_weight_blocks_matches_float64_and_steps_aside_for_autograd(lib, out_features, bias, threads):
    from r1kit.models.layers import Linear

    g = torch.Generator().manual_seed(out_features)
    lin = Linear(48, out_features, bias=bias)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(3, 25, 48, generator=g)  # 75 rows: three 32-row work items
    ref = x.double() @ lin.weight.double().T + (lin.bias.double() if bias else 0)
    torch.set_num_threads(threads)
    try:
        with frozen_weights():
            with torch.no_grad():
                out = lin(x)
            assert list(frozen.current().copies) == [id(lin.weight)]
            y = lin(x)  # the weight requires grad: the autograd path, and a gradient
            assert y.grad_fn is not None
    finally:
        torch.set_num_threads(2)
    assert out.shape == (3, 25, out_features) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.detach(), out, rtol=1e-5, atol=1e-5)
    assert weight_blocks.linear(x, lin.weight) is None  # no scope


def test_a_weight_blocks_scope_belongs_to_its_thread_and_autocast_keeps_torch(lib):
    import threading

    from r1kit.models.layers import Linear

    lin, x = Linear(32, 32), torch.randn(4, 32)
    seen = []
    with frozen_weights(), torch.no_grad():
        worker = threading.Thread(
            target=lambda: seen.append((frozen.current(), weight_blocks.linear(x, lin.weight))))
        worker.start()
        worker.join()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert lin(x).dtype == torch.bfloat16  # as F.linear under autocast
        assert frozen.current().copies == {}
    assert seen == [(None, None)]  # another thread (an engine serving) never sees a rollout's scope


# Expert j gets j + 1 rows (1..9): every remainder of the kernel's 4-row blocks (a 2-row and a 1-row block, with
# more weight rows each), split into work items (tiles) of 1, 4 or the default number of rows; widths that leave
# partial 16-row weight chunks and vector tails, and an expert width below one vector (i = 12: the scalar path).
@pytest.mark.parametrize("tile", [1, 4, kernels.ROUTED_TILE])
@pytest.mark.parametrize("i", [20, 12])
def test_native_routed_experts_match_the_reference_for_every_row_count_of_an_expert(lib, i, tile, monkeypatch):
    monkeypatch.setattr(kernels, "ROUTED_TILE", tile)
    g = torch.Generator().manual_seed(1)
    e, d = 9, 40
    idx = torch.tensor([j for j in range(e) for _ in range(j + 1)])[torch.randperm(45, generator=g)].view(15, 3)
    x, w = torch.randn(15, d, generator=g), torch.rand(15, 3, generator=g)
    gate_up, down = 0.3 * torch.randn(e, 2 * i, d, generator=g), 0.3 * torch.randn(e, d, i, generator=g)
    out = kernels.routed_swiglu(x, idx, w, gate_up, down)
    assert out is not None
    torch.testing.assert_close(out.double(), experts_reference(x, idx, w, gate_up, down), rtol=1e-5, atol=1e-6)


def test_routed_experts_use_the_native_kernel_only_for_few_rows_per_expert_without_gradients(lib, monkeypatch):
    import r1kit.ops.experts as ge

    calls = []
    real = kernels.routed_swiglu
    monkeypatch.setattr(kernels, "routed_swiglu", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(1)
    x, idx, w = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8, 2), generator=g), torch.rand(8, 2)
    gate_up = (0.3 * torch.randn(4, 8, 16, generator=g)).requires_grad_()
    down = (0.3 * torch.randn(4, 16, 4, generator=g)).requires_grad_()
    trained = ge.routed_swiglu(x, idx, w, gate_up, down)
    assert trained.requires_grad and not calls  # training keeps the autograd path
    with torch.no_grad():
        inferred = ge.routed_swiglu(x, idx, w, gate_up, down)
    assert calls == [1]
    torch.testing.assert_close(inferred, trained.detach(), rtol=1e-5, atol=1e-5)
    many = backend.NATIVE_MAX_ROWS_PER_EXPERT * 4 // 2 + 1  # tokens: just over the rows-per-expert limit (4 x K=2)
    x, idx, w = torch.randn(many, 16, generator=g), torch.randint(0, 4, (many, 2), generator=g), torch.rand(many, 2)
    with torch.no_grad():
        ge.routed_swiglu(x, idx, w, gate_up, down)
    assert calls == [1]  # prefill-sized batches keep MKL's grouped matmuls


def test_native_routed_experts_reject_expert_ids_out_of_range(lib):
    x, w = torch.randn(2, 16), torch.rand(2, 1)
    gate_up, down = torch.randn(4, 8, 16), torch.randn(4, 16, 4)
    with pytest.raises(RuntimeError, match="expert ids"):
        kernels.routed_swiglu(x, torch.tensor([[1], [4]]), w, gate_up, down)


def test_native_kernels_decline_what_they_do_not_handle(lib):
    # other dtypes and mismatched shapes go back to the PyTorch path (which names the problem), never into C
    x, idx, w = torch.randn(2, 16), torch.tensor([[1], [2]]), torch.rand(2, 1)
    gate_up, down = torch.randn(4, 8, 16), torch.randn(4, 16, 4)
    assert kernels.routed_swiglu(x, idx, w, gate_up.bfloat16(), down) is None  # one bf16 and one fp32 weight
    assert kernels.routed_swiglu(x.half(), idx, w.half(), gate_up.half(), down.half()) is None
    assert kernels.routed_swiglu(x.double(), idx, w.double(), gate_up.double(), down.double()) is None
    assert kernels.routed_swiglu(x, idx, w, gate_up, torch.randn(4, 12, 4)) is None  # down's D differs from x's
    assert kernels.routed_swiglu(x[:, :8], idx, w, gate_up, down) is None
    tables, lens = torch.tensor([[0]]), torch.tensor([3])
    assert kernels.mla_decode(torch.randn(1, 2, 40), torch.zeros(2, 16, 24), tables, lens, 16, 1.0) is None
    assert kernels.gqa_decode(torch.randn(1, 5, 16), torch.zeros(2, 16, 2, 2, 16), tables, lens, 1.0) is None  # 5 % 2
    assert kernels.gqa_decode(torch.randn(1, 4, 64), torch.zeros(2, 16, 2, 2, 32), tables, lens, 1.0) is None
    assert kernels.mla_decode(torch.randn(1, 2, 24), torch.zeros(2, 16, 24).half(), tables, lens, 16, 1.0) is None


# A bf16 model: its expert weights are read as bf16 and widened to fp32, so the result is the fp32 computation on
# the bf16 weights (x may be either dtype; the output has x's dtype).
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_native_routed_experts_over_bf16_weights_compute_in_fp32(lib, x_dtype):
    g = torch.Generator().manual_seed(5)
    e, d, i = 9, 40, 20
    idx = torch.tensor([j for j in range(e) for _ in range(j + 1)])[torch.randperm(45, generator=g)].view(15, 3)
    x, w = torch.randn(15, d, generator=g).to(x_dtype), torch.rand(15, 3, generator=g).to(x_dtype)
    gate_up = (0.3 * torch.randn(e, 2 * i, d, generator=g)).bfloat16()
    down = (0.3 * torch.randn(e, d, i, generator=g)).bfloat16()
    out = kernels.routed_swiglu(x, idx, w, gate_up, down)
    assert out is not None and out.dtype == x_dtype
    expected = experts_reference(x.float(), idx, w.float(), gate_up.float(), down.float())
    tol = dict(rtol=1e-5, atol=1e-6) if x_dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)  # bf16 output
    torch.testing.assert_close(out.double(), expected, **tol)


@pytest.mark.parametrize("layout", ["mla", "gqa"])
def test_native_decode_attention_over_a_bf16_cache_matches_fp32_attention_on_its_values(lib, layout):
    g = torch.Generator().manual_seed(6)
    bs, num_blocks, nblk = 16, 30, 5
    lens = torch.tensor([1, 16, 37, 70, 5])
    tables = torch.randperm(num_blocks, generator=g)[:len(lens) * nblk].view(len(lens), nblk)
    if layout == "mla":
        cache, q = torch.randn(num_blocks, bs, 48, generator=g).bfloat16(), torch.randn(5, 6, 48, generator=g)

        def decode(q, cache):
            return kernels.mla_decode(q, cache, tables, lens, 40, 0.3)
    else:
        cache, q = torch.randn(num_blocks, bs, 2, 2, 40, generator=g).bfloat16(), torch.randn(5, 6, 40, generator=g)

        def decode(q, cache):
            return kernels.gqa_decode(q, cache, tables, lens, 0.2)
    out = decode(q, cache)
    assert out is not None and out.dtype == torch.float32
    torch.testing.assert_close(out, decode(q, cache.float()), rtol=1e-6, atol=1e-6)  # the fp32 kernel, tested above
    assert decode(q.bfloat16(), cache).dtype == torch.bfloat16


def test_native_routed_experts_with_no_slots_give_zeros(lib):
    out = kernels.routed_swiglu(torch.randn(3, 16), torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0),
                               torch.randn(4, 8, 16), torch.randn(4, 16, 4))
    assert out.shape == (3, 16) and not out.any()


# 6 heads (a group of 4 and one of 2), R = 40 (one 32-wide vector pass and an 8-wide tail), rope 8, blocks of 16:
# rows whose contexts are 1 token, exactly one block, and several blocks with a partial last one.
@pytest.mark.parametrize("threads", [1, 2])
def test_native_mla_decode_matches_softmax_attention_over_each_rows_blocks(lib, threads):
    g = torch.Generator().manual_seed(2)
    h, r, rope, bs, num_blocks = 6, 40, 8, 16, 30
    lens = torch.tensor([1, 16, 37, 70, 5])
    nblk = 5
    tables = torch.randperm(num_blocks, generator=g)[:len(lens) * nblk].view(len(lens), nblk)
    cache = torch.randn(num_blocks, bs, r + rope, generator=g)
    q = torch.randn(len(lens), h, r + rope, generator=g)
    scale = 0.3
    torch.set_num_threads(threads)
    try:
        out = kernels.mla_decode(q, cache, tables, lens, r, scale)
    finally:
        torch.set_num_threads(2)
    flat = cache.view(-1, r + rope).double()
    for row, n in enumerate(lens.tolist()):
        slots = torch.tensor([int(tables[row, j // bs]) * bs + j % bs for j in range(n)])
        lat = flat[slots]  # [n, R + rope]
        p = (scale * q[row].double() @ lat.T).softmax(-1)  # [H, n]
        torch.testing.assert_close(out[row].double(), p @ lat[:, :r], rtol=1e-5, atol=1e-6)


# 6 query heads on 2 kv heads (groups of 3) and on 6 (groups of 1); head dim 40 = a 32-wide pass and an 8-wide tail.
@pytest.mark.parametrize("hkv", [2, 6])
def test_native_gqa_decode_matches_softmax_attention_over_each_rows_blocks(lib, hkv):
    g = torch.Generator().manual_seed(4)
    hq, d, bs, num_blocks, nblk = 6, 40, 16, 30, 5
    lens = torch.tensor([1, 16, 37, 70, 5])
    tables = torch.randperm(num_blocks, generator=g)[:len(lens) * nblk].view(len(lens), nblk)
    cache = torch.randn(num_blocks, bs, 2, hkv, d, generator=g)
    q = torch.randn(len(lens), hq, d, generator=g)
    out = kernels.gqa_decode(q, cache, tables, lens, 0.2)
    flat = cache.view(-1, 2, hkv, d).double()
    for row, n in enumerate(lens.tolist()):
        kv = flat[torch.tensor([int(tables[row, j // bs]) * bs + j % bs for j in range(n)])]  # [n, 2, hkv, d]
        k, v = (kv[:, i].repeat_interleave(hq // hkv, dim=1) for i in (0, 1))  # [n, hq, d]
        p = (0.2 * torch.einsum("hd,nhd->hn", q[row].double(), k)).softmax(-1)
        torch.testing.assert_close(out[row].double(), torch.einsum("hn,nhd->hd", p, v), rtol=1e-5, atol=1e-6)


def test_native_mla_decode_rejects_block_ids_out_of_range(lib):
    cache, q = torch.zeros(4, 16, 24), torch.zeros(1, 2, 24)
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.mla_decode(q, cache, torch.tensor([[1, 9]]), torch.tensor([20]), 16, 1.0)
    with pytest.raises(RuntimeError, match="out of range"):  # a length past the table's blocks
        kernels.gqa_decode(torch.zeros(1, 2, 8), torch.zeros(4, 16, 2, 1, 8), torch.tensor([[1]]), torch.tensor([17]),
                          1.0)


# d = 40: not a multiple of the 16-float vectors; 3000 rows x 40 crosses the kernel's OpenMP threshold
@pytest.mark.parametrize("n", [5, 3000])
def test_native_rms_norm_matches_float64_rms_norm_on_strided_rows(lib, n):
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(n, 56, generator=g)
    x, w = wide[:, 3:43], torch.randn(40, generator=g)  # rows 56 floats apart, like c_kv split off kv_a's output
    out = kernels.rms_norm(x, w, 1e-6)
    x64 = x.double()
    expected = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    assert out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    batched = kernels.rms_norm(x.contiguous().view(1, n, 40), w, 1e-6)  # [B, T, D] input: the same rows
    assert batched.shape == (1, n, 40) and torch.equal(batched[0], out)


@pytest.mark.parametrize("interleave", [True, False])
def test_native_rope_matches_the_pytorch_rope_on_strided_engine_layouts(lib, interleave):
    from r1kit.ops import rope as apply_rope

    g = torch.Generator().manual_seed(11)
    q = torch.randn(9, 3, 30, generator=g)[..., 10:]   # q_pe split off q: [T, H, 20], rows 30 floats apart
    k = torch.randn(9, 26, generator=g)[:, 6:]         # k_pe split off kv_a: [T, 20]
    cos, sin = torch.randn(9, 10, generator=g), torch.randn(9, 10, generator=g)
    for x, c, s_ in ((q, cos.unsqueeze(-2), sin.unsqueeze(-2)), (k, cos, sin)):
        out = kernels.rope(x, c, s_, interleave)
        with torch.enable_grad():  # with gradients enabled apply_rope is the PyTorch formula
            ref = apply_rope(x.double(), c.double(), s_.double(), interleave)
        assert out.shape == x.shape
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    assert kernels.rope(q.double(), cos.unsqueeze(-2), sin.unsqueeze(-2), interleave) is None
    assert kernels.rope(torch.randn(2, 9, 3, 20), cos, sin, interleave) is None  # [B, T, H, d]: the PyTorch path


@pytest.mark.parametrize("n", [7, 3000])  # 3000 x 40 crosses the OpenMP threshold (per-thread weight-grad sums)
def test_native_training_rms_norm_forward_and_gradients_match_float64_autograd(lib, n):
    g = torch.Generator().manual_seed(13)
    wide = torch.randn(n, 52, generator=g)
    w = torch.randn(40, generator=g)
    upstream = torch.randn(n, 40, generator=g)
    results = []
    for dt, fn in ((torch.float32, lambda x, w: train_kernels.rms_norm_train(x, w, 1e-6)),
                   (torch.float64, lambda x, w: F.rms_norm(x, (40,), w, eps=1e-6))):
        leaf, wl = wide.to(dt).clone().requires_grad_(), w.to(dt).clone().requires_grad_()
        out = fn(leaf[:, 5:45], wl)  # strided rows, as c_kv split off kv_a's output
        out.backward(upstream.to(dt))
        results.append((out.detach().double(), leaf.grad.double(), wl.grad.double()))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert results[0][1][:, :5].abs().max() == 0  # columns outside the slice get no gradient


@pytest.mark.parametrize("threads", [1, 2])
def test_routed_experts_train_through_the_native_glue_and_match_float64_autograd(lib, threads, monkeypatch):
    """The training formulation on CPU fp32 sorts, gathers, activates and sums in C (csrc/moe_train.c) around the
    per-expert matmuls: output and all four gradients against plain float64 autograd of the per-token reference.
    D = 40, I = 20 (vector tails); expert 4 gets no rows (its weight gradients must be zero, not garbage)."""
    import r1kit.ops.experts as ge

    g = torch.Generator().manual_seed(5)
    n, k, e, d, i = 37, 3, 6, 40, 20
    idx = torch.stack([torch.tensor([0, 1, 2, 3, 5])[torch.randperm(5, generator=g)[:k]] for _ in range(n)])
    leaves32 = [torch.randn(n, d, generator=g), torch.rand(n, k, generator=g),
                0.3 * torch.randn(e, 2 * i, d, generator=g), 0.3 * torch.randn(e, d, i, generator=g)]
    upstream = torch.randn(n, d, generator=g)
    calls, real = [], train_kernels.expert_order
    monkeypatch.setattr(train_kernels, "expert_order", lambda *a: calls.append(1) or real(*a))
    results = []
    for dt, fn in ((torch.float32, ge.routed_swiglu), (torch.float64, experts_reference)):
        leaves = [t.to(dt, copy=True).requires_grad_() for t in leaves32]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = fn(leaves[0], idx, *leaves[1:])
            out.backward(upstream.to(dt))
        finally:
            torch.set_num_threads(before)
        results.append([out.detach().double()] + [t.grad.double() for t in leaves])
    assert calls == [1]  # the fp32 run took the native glue (the float64 reference never calls it)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert results[0][3][4].abs().max() == 0 and results[0][4][4].abs().max() == 0
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        train_kernels.expert_order(torch.tensor([0, 6]), 6)


def test_native_experts_stay_finite_for_very_negative_gate_pre_activations(lib):
    """silu(g) for g far below -88 (where expf(-g) overflows): -ffast-math's vectorised division by an infinite
    denominator gave NaN, so the sigmoid is written with a bounded one. Both C kernels (decode and the training glue),
    against the torch path, with I = 32 so the vector loop runs."""
    import r1kit.ops.experts as ge

    n, k, e, d, i = 5, 2, 3, 16, 32
    x = torch.ones(n, d)
    idx = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0]])
    w = torch.full((n, k), 0.5)
    gate_up = torch.cat([torch.full((e, i, d), -20.0), torch.full((e, i, d), 0.1)], dim=1)  # gate = -320
    gate_up[:, :i:2] = 0.01  # every other gate unit ordinary (0.16), so the output is not all zeros
    down = torch.full((e, d, i), 0.1)
    with torch.no_grad():
        decode = kernels.routed_swiglu(x, idx, w, gate_up, down)
    leaves = [t.clone().requires_grad_() for t in (x, w, gate_up, down)]
    trained = ge.routed_swiglu(leaves[0], idx, *leaves[1:])
    trained.sum().backward()
    ref = experts_reference(x, idx, w, gate_up, down)
    for out in (decode, trained.detach()):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_rmsnorm_module_trains_through_the_native_kernel_on_cpu(lib, monkeypatch):
    from r1kit.models.layers import RMSNorm

    norm = RMSNorm(24)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 5, 24, requires_grad=True)
    calls = []
    real = train_kernels.rms_norm_train
    monkeypatch.setattr(train_kernels, "rms_norm_train", lambda *a: calls.append(1) or real(*a))
    norm(x).sum().backward()
    assert calls and x.grad is not None and norm.weight.grad is not None


def test_native_ops_step_aside_for_fake_tensors_and_refuse_double_backward(lib):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from r1kit.models.layers import RMSNorm

    norm = RMSNorm(16)
    torch.nn.init.ones_(norm.weight)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():  # tracing: no data behind data_ptr
        fake = mode.from_tensor(torch.randn(4, 16))
        assert norm(fake).shape == (4, 16)  # the PyTorch path, not a read through a null pointer
        assert kernels.rms_norm(fake, norm.weight, 1e-6) is None
        assert kernels.router_select(mode.from_tensor(torch.rand(4, 8)), torch.zeros(8), 2, 1, 1, True, 1.0) is None
    x = torch.randn(3, 16, requires_grad=True)
    (gx,) = torch.autograd.grad(norm(x).pow(2).sum(), x, create_graph=True)
    assert gx.requires_grad  # (without once_differentiable it silently would not, and second order would be wrong)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()  # second order through the C backward: an error, not a silently wrong gradient


def test_native_router_outputs_ignore_torchs_default_dtype(lib):
    scores, bias = torch.rand(5, 8), torch.zeros(8)
    torch.set_default_dtype(torch.float64)
    try:
        idx, w = kernels.router_select(scores, bias, 2, 4, 2, True, 1.0)
    finally:
        torch.set_default_dtype(torch.float32)
    assert w.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(w.sum(-1), torch.ones(5))  # normalised weights, not garbage
    assert (w > 0).all()


def _router_reference(scores, bias, k, groups, topk_groups, norm, scaling):
    """DeepSeek-V3's routing written out per token in float64: group score = top-2 sum of the biased choices."""
    n, e = scores.shape
    per = e // groups
    idx, w = [], []
    for s in scores.double():
        choice = s + bias.double()
        gs = torch.stack([choice[q * per:(q + 1) * per].topk(min(2, per))[0].sum() for q in range(groups)])
        kept = set(gs.argsort(descending=True)[:topk_groups].tolist())
        masked = torch.tensor([c if j // per in kept else float("-inf") for j, c in enumerate(choice.tolist())])
        top = masked.argsort(descending=True)[:k]
        wt = s[top] / (s[top].sum() + 1e-20) if norm else s[top]
        idx.append(top)
        w.append(wt * scaling)
    return torch.stack(idx), torch.stack(w)


@pytest.mark.parametrize("e,k,groups,topk_groups,norm", [(64, 8, 8, 4, True), (16, 2, 4, 1, False),
                                                        (12, 3, 1, 1, True), (6, 3, 3, 2, True)])
def test_native_router_selects_the_same_experts_and_weights_as_a_reference(lib, e, k, groups, topk_groups, norm):
    g = torch.Generator().manual_seed(e + k)
    scores = torch.rand(50, e, generator=g)
    bias = 0.05 * torch.randn(e, generator=g)
    idx, w = kernels.router_select(scores, bias, k, groups, topk_groups, norm, 2.5)
    ref_idx, ref_w = _router_reference(scores, bias, k, groups, topk_groups, norm, 2.5)
    assert torch.equal(idx, ref_idx)  # the kernel returns the experts in descending order of choice
    torch.testing.assert_close(w.double(), ref_w, rtol=1e-6, atol=1e-7)
    assert kernels.router_select(scores.double(), bias, k, groups, topk_groups, norm, 2.5) is None
    assert kernels.router_select(scores, bias, k, 5 if e % 5 else 7, 1, norm, 2.5) is None  # groups must divide E


def _random_router(seed: int):
    """A DeepSeek-V3 router of 16 experts (top-4, 2 of 4 groups) over hidden size 32, random weights; and its
    generator, for the inputs."""
    from r1kit.models.deepseek_v3 import DeepseekV3Config, Router

    cfg = DeepseekV3Config(hidden_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                           vocab_size=64)
    router = Router(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        router.weight.copy_(torch.randn(16, 32, generator=g))
    return router, g


def test_deepseek_router_gives_the_same_routing_with_and_without_the_native_kernel(lib, monkeypatch):
    router, g = _random_router(3)
    with torch.no_grad():
        router.e_score_correction_bias.copy_(0.1 * torch.randn(16, generator=g))
    x = torch.randn(40, 32, generator=g)
    with torch.no_grad():
        idx, w, scores = router(x)
        monkeypatch.setattr(kernels, "router_select", lambda *a, **kw: None)
        ref_idx, ref_w, ref_scores = router(x)
    order, ref_order = idx.argsort(-1), ref_idx.argsort(-1)  # torch's topk(sorted=False) order is its own
    assert torch.equal(idx.gather(1, order), ref_idx.gather(1, ref_order))
    torch.testing.assert_close(w.gather(1, order), ref_w.gather(1, ref_order), rtol=1e-6, atol=1e-7)
    assert torch.equal(scores, ref_scores)


def test_deepseek_router_routes_training_and_inference_forwards_alike_even_on_exact_ties(lib):
    """The C selection serves the training forward too (weights then gathered from the scores, differentiably), so
    exact ties -- here every expert scores 0.5 for the zero tokens -- go to the same experts with and without
    gradients: a rollout and the training pass over the same weights route identically."""
    router, g = _random_router(4)
    x = torch.cat([torch.zeros(3, 32), torch.randn(5, 32, generator=g)])
    with torch.no_grad():
        idx, w, _ = router(x)
    t_idx, t_w, _ = router(x)
    assert torch.equal(t_idx, idx) and idx[:3].tolist() == [[0, 1, 2, 3]] * 3  # ties: lowest ids, both paths
    torch.testing.assert_close(t_w.detach(), w)
    (t_w * torch.arange(1.0, 5.0)).sum().backward()  # (a plain sum of normalised weights has no gradient)
    assert router.weight.grad is not None and router.weight.grad[:, :].abs().sum() > 1e-3


def test_loading_the_native_library_keeps_denormals(lib):
    # a library linked with -ffast-math would switch the process to flush-to-zero when it loads
    tiny = torch.tensor([1e-39])  # a float32 denormal
    assert (tiny * 1.0).item() > 0 and (tiny + tiny).item() > 0


def test_native_library_is_built_once_per_machine_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("R1KIT_CACHE_DIR", str(tmp_path))
    library.load.cache_clear()
    try:
        if library.load() is None:
            pytest.skip("no C compiler for the native CPU kernels")
        libs = list((tmp_path / "kernels").glob("r1kit_cpu-*.so"))
        assert len(libs) == 1 and not list((tmp_path / "kernels").glob(".*"))  # no temporary file left behind
        stamp = libs[0].stat().st_mtime_ns
        library.load.cache_clear()
        assert library.load() is not None
        assert libs[0].stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    finally:
        library.load.cache_clear()


@pytest.mark.parametrize("compiler, message", [("no-such-cc", "no C compiler"), ("false", "failed")])
def test_missing_or_failing_compiler_falls_back_to_pytorch_with_a_warning(tmp_path, monkeypatch, compiler, message):
    import r1kit.ops.experts as ge

    monkeypatch.setenv("R1KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", compiler)
    library.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=message):
            assert library.load() is None
        g = torch.Generator().manual_seed(3)
        x, idx, w = torch.randn(5, 16, generator=g), torch.randint(0, 4, (5, 2), generator=g), torch.rand(5, 2)
        gate_up, down = torch.randn(4, 8, 16, generator=g), torch.randn(4, 16, 4, generator=g)
        with torch.no_grad():
            out = ge.routed_swiglu(x, idx, w, gate_up, down)  # the PyTorch path
        torch.testing.assert_close(out.double(), experts_reference(x, idx, w, gate_up, down), rtol=1e-5, atol=1e-6)
    finally:
        library.load.cache_clear()


def test_an_unusable_cache_directory_falls_back_with_a_warning(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("R1KIT_CACHE_DIR", str(not_a_dir))
    library.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="failed"):
            assert library.load() is None
    finally:
        library.load.cache_clear()


def test_a_flag_set_the_compiler_rejects_is_not_retried_once_another_built(tmp_path, monkeypatch):
    # a compiler without glibc's libmvec (macOS, musl): the first flag set fails, the second builds; the next
    # start finds that library without compiling anything
    if library.load() is None:
        pytest.skip("no C compiler for the native CPU kernels")
    import shutil

    log = tmp_path / "calls"
    cc = tmp_path / "cc-without-libmvec"
    cc.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncase "$*" in *-lmvec*) echo "cannot find -lmvec" >&2; exit 1;; esac\n'
                  f'exec {shutil.which("cc")} "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("R1KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(cc))
    library.load.cache_clear()
    try:
        assert library.load() is not None
        builds = [line for line in log.read_text().splitlines() if "--version" not in line]
        assert any("-lmvec" in line for line in builds) and any("-shared" in line and "-lmvec" not in line
                                                                 for line in builds)
        log.write_text("")
        library.load.cache_clear()
        assert library.load() is not None
        assert all("--version" in line for line in log.read_text().splitlines())  # nothing compiled
    finally:
        library.load.cache_clear()


def test_r1kit_native_0_switches_the_kernels_off(monkeypatch):
    monkeypatch.setenv("R1KIT_NATIVE", "0")
    library.load.cache_clear()
    try:
        assert library.load() is None
    finally:
        library.load.cache_clear()


def shared_prefix_reference(q, k, v, valid, P, G, C, scale):
    """float64, every prompt and every completion attended as its own sequence (r1kit.ops.SharedPrefix's
    semantics): a prompt query sees the valid prompt keys up to itself (a padding query only itself), a completion
    query every valid prompt key and its own completion's keys up to itself. q/k/v [B, H, L, d] -> [B, H, L, dv]."""
    q, k, v = q.double(), k.double(), v.double()
    rows = []
    for b in range(q.shape[0]):
        ok = valid[b].bool().tolist()
        cols = []
        for t in range(P + G * C):
            if t < P:
                keys = [j for j in range(t + 1) if ok[j] or j == t]
            else:
                g, c = divmod(t - P, C)
                keys = [j for j in range(P) if ok[j]] + [P + g * C + x for x in range(c + 1)]
            s = torch.einsum("hd,hnd->hn", q[b, :, t], k[b, :, keys]) * scale
            cols.append(torch.einsum("hn,hnd->hd", s.softmax(-1), v[b, :, keys]))
        rows.append(torch.stack(cols, dim=1))
    return torch.stack(rows)


# Odd sizes around the kernel's 8-row causal blocks and 16-float column blocks; left-padded prompts (one with a
# single real token); C = 1; v narrower than q/k and read through strides (MLA's v is a slice of kv_b's output).
@pytest.mark.parametrize("B, H, P, G, C, d, dv, pads, threads", [
    (2, 3, 9, 3, 7, 32, 16, [0, 4], 1),
    (1, 2, 5, 2, 19, 48, 32, [2], 2),
    (2, 1, 20, 2, 1, 16, 16, [19, 0], 2),
])
def test_native_shared_prefix_attention_and_its_gradients_match_separate_sequences(lib, B, H, P, G, C, d, dv,
                                                                                   pads, threads):
    g = torch.Generator().manual_seed(0)
    L = P + G * C
    q = torch.randn(B, L, H, d, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(B, L, H, d, generator=g).transpose(1, 2).requires_grad_()
    wide = torch.randn(B, L, H, dv + 8, generator=g).requires_grad_()
    v = wide[..., 8:].transpose(1, 2)
    valid = torch.ones(B, P, dtype=torch.uint8)
    for b, n in enumerate(pads):
        valid[b, :n] = 0
    go = torch.randn(B, H, L, dv, generator=g)
    torch.set_num_threads(threads)
    try:
        out = train_kernels.shared_prefix_attention(q, k, v, valid, (P, G, C), d ** -0.5)
        grads = torch.autograd.grad(out, (q, k, wide), go)
    finally:
        torch.set_num_threads(2)
    ref = shared_prefix_reference(q, k, v, valid, P, G, C, d ** -0.5)
    ref_grads = torch.autograd.grad(ref, (q, k, wide), go.double())
    assert out.dtype == torch.float32 and out.shape == (B, H, L, dv)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want.double(), atol=1e-5), (got.double() - want).abs().max()
    assert grads[2][..., :8].abs().max() == 0  # the columns of kv outside v get no gradient


def test_shared_prefix_rows_attend_through_the_native_kernel_on_cpu(lib, monkeypatch):
    from r1kit.ops import SharedPrefix

    g = torch.Generator().manual_seed(1)
    P, G, C, H, d, dv = 6, 4, 9, 2, 48, 32          # deepseek_v3-small's head dims (v narrower than q/k)
    valid = torch.ones(2, P, dtype=torch.bool)
    valid[1, :3] = False
    layout = SharedPrefix(P, G, C, valid)
    q, k = (torch.randn(2, H, P + G * C, d, generator=g, requires_grad=True) for _ in range(2))
    v = torch.randn(2, H, P + G * C, dv, generator=g, requires_grad=True)
    calls = []
    real = train_kernels.shared_prefix_attention
    monkeypatch.setattr(train_kernels, "shared_prefix_attention", lambda *a: calls.append(1) or real(*a))
    got = layout.attend(q, k, v, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast: the same fp32 kernel on upcast inputs
        got_autocast = layout.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3)
    assert len(calls) == 2 and got_autocast.dtype == torch.float32
    monkeypatch.setattr(train_kernels, "shared_prefix_attention", lambda *a: None)  # torch's SDPA path
    want = layout.attend(q, k, v, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_autocast = layout.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_autocast, want_autocast, atol=1e-5)
    go = torch.randn(got.shape, generator=g)
    monkeypatch.setattr(train_kernels, "shared_prefix_attention", real)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), go), torch.autograd.grad(want, (q, k, v), go)):
        assert torch.allclose(a, b, atol=1e-5)
    (gq,) = torch.autograd.grad(layout.attend(q, k, v, 0.3).pow(2).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gq.sum().backward()


def test_native_shared_prefix_attention_declines_what_it_does_not_handle(lib):
    attend = train_kernels.shared_prefix_attention
    valid = torch.ones(1, 2, dtype=torch.uint8)
    q = torch.randn(1, 2, 8, 32)
    assert attend(q, q, q, valid, (2, 2, 3), 1.0) is not None
    assert attend(q[..., :24], q[..., :24], q[..., :24], valid, (2, 2, 3), 1.0) is None
    assert attend(q, q[:, :1], q[:, :1], valid, (2, 2, 3), 1.0) is None  # fewer kv heads
    assert attend(q, q, q, valid, (2, 2, 2), 1.0) is None  # L != P + G * C
    assert attend(q.double(), q.double(), q.double(), valid, (2, 2, 3), 1.0) is None
    assert attend(q, q, q, valid.bool(), (2, 2, 3), 1.0) is None
    assert attend(q.transpose(-1, -2)[..., :8, :], q, q, valid, (2, 2, 3), 1.0) is None
    assert attend(q, q, q[..., 0, :], valid, (2, 2, 3), 1.0) is None  # 3-D v
    big = torch.ones(1, 20, dtype=torch.uint8)
    assert attend(q, q, q, big, (20, 1, -12), 1.0) is None  # P + G*C = L, but C < 0
