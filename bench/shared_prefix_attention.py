"""Shared-prefix training attention (GRPO's packed rows): r1kit's C kernel vs torch's SDPA on the same rows.

The peer is what the same rows cost through torch: `SharedPrefix.attend`'s torch reference (two SDPA calls, the
prompt's keys repeated for each completion next to its own, an explicit mask, v zero-padded to q's head dim for the
fused flash kernel), which r1kit used before the kernel and still uses off CPU. Both compute the same outputs and
gradients (the benchmark checks). Timed in alternation in one process; prints forward and forward + backward
milliseconds and the ratio.

    python3 bench/shared_prefix_attention.py                       # deepseek_v3-small's GRPO micro-batch
    python3 bench/shared_prefix_attention.py --rows 2 --heads 8 --prompt 84 --group 8 --completion 128 --d 48 --dv 32
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from r1kit.ops import SharedPrefix, use_backend
from r1kit.ops.cpu import library


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2, help="packed rows (prompts) per micro-batch")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--prompt", type=int, default=84)
    p.add_argument("--group", type=int, default=8, help="completions per row")
    p.add_argument("--completion", type=int, default=128)
    p.add_argument("--d", type=int, default=48, help="q/k head dim")
    p.add_argument("--dv", type=int, default=32, help="v head dim")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    if library.load() is None:
        raise SystemExit("the native kernels are unavailable (no C compiler, or R1KIT_NATIVE=0)")
    B, H, P, G, C, d, dv = a.rows, a.heads, a.prompt, a.group, a.completion, a.d, a.dv
    L = P + G * C
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(B, P, dtype=torch.bool)
    valid[-1, :P // 10] = False  # one left-padded prompt
    layout = SharedPrefix(P, G, C, valid)
    # the projections' layout: [B, L, H, d] seen as [B, H, L, d]
    q, k = (torch.randn(B, L, H, d, generator=g).transpose(1, 2).requires_grad_() for _ in range(2))
    v = torch.randn(B, L, H, dv, generator=g).transpose(1, 2).requires_grad_()
    go = torch.randn(B, H, L, dv, generator=g)

    def run(use_kernel: bool, backward: bool):
        with use_backend("cpu" if use_kernel else "torch"):
            out = layout.attend(q, k, v, d ** -0.5)
            grads = torch.autograd.grad(out, (q, k, v), go) if backward else ()
        return out.detach(), grads

    (o1, g1), (o2, g2) = run(False, True), run(True, True)
    err = max(float((x - y).abs().max()) for x, y in zip((o1, *g1), (o2, *g2)))
    print(f"rows {B}, heads {H}, prompt {P}, {G} completions of {C}, head dims {d}/{dv}, "
          f"{torch.get_num_threads()} threads; largest difference of output and gradients {err:.1e}")
    for backward in (False, True):
        times = {"torch SDPA": [], "r1kit C": []}
        for r in range(a.rounds):
            for name in (times if r % 2 else list(times)[::-1]):
                t = time.perf_counter()
                run(name == "r1kit C", backward)
                times[name].append(time.perf_counter() - t)
        med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        what = "forward + backward" if backward else "forward"
        print(f"{what:18s}: torch SDPA {med['torch SDPA']:.2f} ms, r1kit C {med['r1kit C']:.2f} ms, "
              f"ratio {med['torch SDPA'] / med['r1kit C']:.2f}x")


if __name__ == "__main__":
    main()
