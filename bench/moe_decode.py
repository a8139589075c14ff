"""Routed experts at decode-sized batches: r1kit's `routed_swiglu` vs transformers' DeepseekV3Experts.

In a decode step of B sequences the MoE layers see N = B tokens, i.e. N*K/E rows per expert (8 for 64 sequences
of the small preset: 64 experts, top-8). On CPU r1kit runs its C kernel (`r1kit/ops/cpu/csrc/routed_swiglu.c`,
"r1kit"); "r1kit torch" is the PyTorch path used without it (rows padded into [E, cap, D], one bmm per projection,
when few rows per expert; else per-expert matmuls); "r1kit grouped" forces the per-expert-mm formulation (the one
used for training); "r1kit blocked" is the C kernel over column-blocked weight copies, as in a GRPO rollout
(ops.frozen_weights(); the copies are made before timing). transformers runs its default experts implementation on
the same weights (the saved r1kit model) and the same routing. All MoE layers of the model are timed in turn, the
implementations alternate, inference mode, median of the repeats.

    python3 bench/moe_decode.py --threads 2 --tokens 8 64 256
    python3 bench/moe_decode.py --tiles 8 16 32 64   # also the C kernel at other work-item sizes (kernels.ROUTED_TILE)
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch

import r1kit.ops.experts as ge
from r1kit.ops import frozen, use_backend
from r1kit.ops.cpu import kernels, library, weight_blocks
from r1kit.models.checkpoint import save_model
from r1kit.models.random_checkpoint import preset_config
from r1kit.models.registry import build_model


def _torch(*args, padded_max_rows: int | None = None):
    """r1kit's PyTorch path (the C kernel switched off), optionally with the padded formulation off too."""
    saved = ge.TUNING["cpu"]
    if padded_max_rows is not None:
        ge.TUNING["cpu"] = dataclasses.replace(saved, padded_max_rows=padded_max_rows)
    try:
        with use_backend("torch"):
            return ge.routed_swiglu(*args)
    finally:
        ge.TUNING["cpu"] = saved


def _with_tile(tile: int):
    def run(moe, hf_experts, x, idx, w):
        saved, kernels.ROUTED_TILE = kernels.ROUTED_TILE, tile
        try:
            return kernels.routed_swiglu(x, idx, w, moe.experts.gate_up, moe.experts.down)
        finally:
            kernels.ROUTED_TILE = saved
    return run


_ROLLOUT_COPIES = frozen.WeightCopies()  # the blocked copies of a frozen-weights scope, kept for the whole benchmark


def _blocked(moe, hf_experts, x, idx, w):
    """the C kernel over column-blocked copies, as inside ops.frozen_weights() (a GRPO rollout)"""
    saved, frozen._SCOPE.copies = frozen.current(), _ROLLOUT_COPIES
    try:
        gate_up, down = moe.experts.gate_up, moe.experts.down
        return kernels.routed_swiglu(x, idx, w, gate_up, down, weight_blocks.expert_blocks(gate_up, down))
    finally:
        frozen._SCOPE.copies = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--tokens", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiles", type=int, nargs="*", default=[],
                   help="also time the C kernel with work items of these many rows (default: kernels.ROUTED_TILE)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    config = preset_config("deepseek_v3", args.preset, vocab_size=1024)
    ours = build_model(config, device="cpu", seed=0).eval()
    with tempfile.TemporaryDirectory() as d:
        save_model(ours, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    layers = [(a.mlp, b.mlp.experts) for a, b in zip(ours.model.layers, hf.model.layers) if hasattr(a.mlp, "gate")]
    impls = {
        "r1kit": lambda moe, hf_experts, x, idx, w: ge.routed_swiglu(x, idx, w, moe.experts.gate_up, moe.experts.down),
        "r1kit torch": lambda moe, hf_experts, x, idx, w: _torch(x, idx, w, moe.experts.gate_up, moe.experts.down),
        "r1kit grouped": lambda moe, hf_experts, x, idx, w: _torch(x, idx, w, moe.experts.gate_up, moe.experts.down,
                                                                   padded_max_rows=0),
        "transformers": lambda moe, hf_experts, x, idx, w: hf_experts(x, idx, w),
        "r1kit blocked": _blocked,
    }
    for tile in args.tiles:
        impls[f"r1kit tile {tile}"] = _with_tile(tile)
    if library.load() is None:
        print("note: the native kernel could not be built (no C compiler?): 'r1kit' is the PyTorch path here")
    print(f"[{args.preset}] {len(layers)} MoE layers, {config.n_routed_experts} experts (top-"
          f"{config.num_experts_per_tok}), hidden {config.hidden_size}, {args.threads} threads; ms per token batch "
          f"through all MoE layers' routed experts (median of {args.repeats})")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in args.tokens:
            x = 0.5 * torch.randn(n, config.hidden_size, generator=g)
            routes = [moe.gate(x)[:2] for moe, _ in layers]
            outs = {k: [f(moe, h, x, i, w) for (moe, h), (i, w) in zip(layers, routes)] for k, f in impls.items()}
            diff = max((a - b).abs().max().item() for k in impls for a, b in zip(outs[k], outs["r1kit"]))
            times = {k: [] for k in impls}
            for _ in range(args.repeats):
                for k, f in impls.items():
                    t0 = time.perf_counter()
                    for (moe, h), (i, w) in zip(layers, routes):
                        f(moe, h, x, i, w)
                    times[k].append(time.perf_counter() - t0)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            cap = max(int(torch.bincount(i.flatten()).max()) for i, _ in routes)
            print(f"  {n:5d} tokens (most rows on one expert: {cap:3d}): " +
                  "  ".join(f"{k} {v:6.2f}" for k, v in ms.items()) +
                  f"   torch/r1kit {ms['r1kit torch'] / ms['r1kit']:.2f}x, "
                  f"transformers/r1kit {ms['transformers'] / ms['r1kit']:.2f}x, "
                  f"r1kit/blocked {ms['r1kit'] / ms['r1kit blocked']:.2f}x   max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
