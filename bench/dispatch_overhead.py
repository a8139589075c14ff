"""What the backend dispatch (r1kit/ops/dispatch.py) costs a decode step.

1. ops.X (dispatch -> cpu backend -> kernel wrapper) against the same kernel wrapper called directly, alternating,
   on decode-sized tensors (64 rows): the dispatch's cost per call.
2. How many dispatched calls an engine step of the given deepseek_v3 preset makes with 64 sequences (ops.trace()).
Their product is the dispatch's share of a decode step; compare it with the step time of bench/engine_throughput.py.

    python3 bench/dispatch_overhead.py --preset small
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from r1kit import LLM, SamplingParams, ops
from r1kit.ops.cpu import kernels, library


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="deepseek_v3 preset of the random model for the call count")
    p.add_argument("--calls", type=int, default=2000, help="calls per timing")
    p.add_argument("--repeats", type=int, default=7, help="alternating timings of each pair (the median is printed)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if library.load() is None:
        raise SystemExit(f"the cpu backend is unavailable ({library.failure}): nothing to compare")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g), torch.randn(256, generator=g)
    q, cos, sin = torch.randn(64, 4, 32, generator=g), torch.randn(64, 1, 16, generator=g), torch.randn(64, 1, 16,
                                                                                                         generator=g)
    pairs = {"rms_norm": (lambda: ops.rms_norm(x, w, 1e-6), lambda: kernels.rms_norm(x, w, 1e-6)),
             "rope": (lambda: ops.rope(q, cos, sin, True), lambda: kernels.rope(q, cos, sin, True))}
    with torch.no_grad():
        for name, (via, direct) in pairs.items():
            with ops.trace() as ran:
                via()
            assert ran == [(name, "cpu")], ran  # the dispatch reaches the same kernel
            t_via, t_direct = [], []
            for _ in range(a.repeats):
                t_via.append(per_call_us(via, a.calls))
                t_direct.append(per_call_us(direct, a.calls))
            print(f"{name}: via dispatch {statistics.median(t_via):.2f} us, wrapper direct "
                  f"{statistics.median(t_direct):.2f} us: the dispatch adds "
                  f"{statistics.median(t_via) - statistics.median(t_direct):.2f} us a call")

    llm = LLM(f"random-deepseek_v3-{a.preset}", max_num_seqs=64, max_model_len=256)
    prompts = [[5 + i, 6, 7, 8] for i in range(64)]
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)  # warm-up
    steps = 3  # one prefill and two decode steps
    with ops.trace() as ran:
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), use_tqdm=False)
    print(f"dispatched calls per engine step (64 sequences, {a.preset} preset, 1 prefill + {steps - 1} decode steps "
          f"averaged): {len(ran) / steps:.0f}")


if __name__ == "__main__":
    main()
