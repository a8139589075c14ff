"""Paged decode attention on CPU: r1kit's C kernels vs its PyTorch path, on the same decode step.

One decode step of N sequences whose contexts (L/2 to L tokens) sit in scattered KV blocks: `gqa_paged_attention`
(Llama / Qwen) and `mla_paged_attention` (DeepSeek-V3, after weight absorption) as the engine calls them, with the
native kernel (`r1kit/ops/cpu/csrc/paged_decode.c`: each row reads its blocks in place) and with them
switched off (the PyTorch path gathers every row's context into a padded copy, masks it, and runs SDPA / two bmm).
ms per call (the cache write of the new token included), median of the repeats, and the max |diff|.

    python3 bench/paged_decode.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from r1kit.models.context import AttentionContext
from r1kit.ops import gqa_paged_attention, mla_paged_attention, use_backend
from r1kit.ops.cpu import library

BLOCK = 16
# (label, N sequences, max context L, attention shape)
CASES = [
    ("GRPO decode, qwen2-small", 64, 200, dict(kind="gqa", hq=8, hkv=2, d=40)),
    ("long trace, Qwen-1.5B heads", 4, 4096, dict(kind="gqa", hq=12, hkv=2, d=128)),
    ("batch of traces, Qwen-1.5B heads", 32, 1024, dict(kind="gqa", hq=12, hkv=2, d=128)),
    ("GRPO decode, deepseek_v3-small", 64, 200, dict(kind="mla", h=8, nope=32, rope=16, r=64, v=32)),
    ("long trace, V3-like latent 512+64", 4, 4096, dict(kind="mla", h=16, nope=128, rope=64, r=512, v=128)),
    ("batch of traces, V3-like latent", 32, 1024, dict(kind="mla", h=16, nope=128, rope=64, r=512, v=128)),
]


def decode_step(n: int, max_len: int, g: torch.Generator):
    lens = torch.randint(max_len // 2, max_len + 1, (n,), generator=g)
    nblk = -(-max_len // BLOCK)
    num_blocks = n * nblk + 1
    tables = torch.randperm(num_blocks, generator=g)[:n * nblk].view(n, nblk)
    slots = torch.stack([tables[b, (int(L) - 1) // BLOCK] * BLOCK + (int(L) - 1) % BLOCK for b, L in enumerate(lens)])
    ctx = AttentionContext(query_start_loc=torch.arange(n + 1), seq_lens=lens, slot_mapping=slots, block_tables=tables,
                           query_lens=[1] * n, seq_lens_list=lens.tolist(), block_size=BLOCK)
    return ctx, num_blocks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if library.load() is None:
        print("the native kernels could not be built (no C compiler?): nothing to compare")
        return 1
    g = torch.Generator().manual_seed(0)
    print(f"{args.threads} threads, block {BLOCK}, fp32; ms per decode-step call (median of {args.repeats})")
    with torch.inference_mode():
        for label, n, max_len, shape in CASES:
            ctx_args = decode_step(n, max_len, g)
            if shape["kind"] == "gqa":
                hq, hkv, d = shape["hq"], shape["hkv"], shape["d"]
                cache = torch.randn(ctx_args[1], BLOCK, 2, hkv, d, generator=g)
                inputs = (torch.randn(n, hq, d, generator=g), torch.randn(n, hkv, d, generator=g),
                          torch.randn(n, hkv, d, generator=g), cache)
                call = lambda ctx: gqa_paged_attention(*inputs, ctx, d ** -0.5)  # noqa: E731
            else:
                h, nope, rope, r, v = (shape[k] for k in ("h", "nope", "rope", "r", "v"))
                cache = torch.randn(ctx_args[1], BLOCK, r + rope, generator=g)
                w_uk, w_uv = torch.randn(h, nope, r, generator=g) / r ** 0.5, torch.randn(h, v, r, generator=g) / r ** 0.5
                inputs = (torch.randn(n, h, nope, generator=g), torch.randn(n, h, rope, generator=g),
                          torch.randn(n, r, generator=g), torch.randn(n, rope, generator=g), cache)
                call = lambda ctx: mla_paged_attention(*inputs, ctx, w_uk, w_uv, (nope + rope) ** -0.5)  # noqa: E731
            times, outs = {"native": [], "torch": []}, {}
            for rep in range(args.repeats + 1):
                for mode in times:
                    ctx, _ = decode_step(n, max_len, torch.Generator().manual_seed(rep))  # fresh per-step plan
                    with use_backend("cpu" if mode == "native" else "torch"):
                        t0 = time.perf_counter()
                        outs[mode] = call(ctx)
                        if rep:
                            times[mode].append(1e3 * (time.perf_counter() - t0))
            ms = {k: statistics.median(v) for k, v in times.items()}
            diff = (outs["native"] - outs["torch"]).abs().max().item()
            print(f"  {label:36s} N={n:3d} L<={max_len:5d}: native {ms['native']:7.2f}  torch path {ms['torch']:7.2f}"
                  f"  torch/native {ms['torch'] / ms['native']:5.2f}x  max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
