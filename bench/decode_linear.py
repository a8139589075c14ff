"""Decode-sized linear layers: r1kit's blocked kernel (csrc/blocked_linear.c, used in GRPO rollouts) vs torch's
F.linear (MKL) on the same weights.

Every Linear of a model preset (the projections of all layers and lm_head, in model order, so each layer's weights
have left the cache by the time the next step reaches them, as in a decode step) is applied to a batch of N rows.
"r1kit blocked" runs them as inside ops.frozen_weights() (the copies are made before timing). The two alternate;
prints the median milliseconds per pass over all the linears, the ratio and the largest difference.

    python3 bench/decode_linear.py --rows 1 8 64 256
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from r1kit.ops import frozen_weights
from r1kit.ops.cpu import library
from r1kit.models.layers import Linear
from r1kit.models.random_checkpoint import preset_config
from r1kit.models.registry import build_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-type", default="deepseek_v3")
    p.add_argument("--preset", default="small")
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    if library.load() is None:
        raise SystemExit("the native kernels are unavailable (no C compiler, or R1KIT_NATIVE=0)")
    model = build_model(preset_config(args.model_type, args.preset, vocab_size=1024), device="cpu", seed=0).eval()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    print(f"[{args.model_type}-{args.preset}] {len(linears)} linears, {torch.get_num_threads()} threads; ms per pass "
          f"over all of them (median of {args.repeats})")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(), frozen_weights():
        for n in args.rows:
            xs = [torch.randn(n, m.in_features, generator=g) for m in linears]
            impls = {"torch F.linear": lambda m, x: F.linear(x, m.weight, m.bias),
                     "r1kit blocked": lambda m, x: m(x)}
            outs = {k: [f(m, x) for m, x in zip(linears, xs)] for k, f in impls.items()}  # (makes the copies)
            diff = max(float((a - b).abs().max()) for a, b in zip(*outs.values()))
            times = {k: [] for k in impls}
            for r in range(args.repeats):
                for k in (impls if r % 2 else list(impls)[::-1]):
                    t0 = time.perf_counter()
                    for m, x in zip(linears, xs):
                        impls[k](m, x)
                    times[k].append(time.perf_counter() - t0)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            print(f"  {n:4d} rows: " + "  ".join(f"{k} {v:6.2f}" for k, v in ms.items()) +
                  f"   torch/r1kit {ms['torch F.linear'] / ms['r1kit blocked']:.2f}x   max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
