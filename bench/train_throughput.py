"""Training throughput (forward + backward tokens/s) of r1kit's DeepSeek-V3 vs transformers' DeepseekV3ForCausalLM.

Same config, same weights (r1kit saves, transformers loads the files), same batch, same dtype, in one process;
the models are timed in alternation so that background load hits all alike. Prints tokens/s and the ratios.
transformers runs twice: with its default experts implementation (5.x: "grouped_mm", tokens sorted by expert, on
CPU a loop of per-expert matmuls -- the same idea as r1kit's) and with experts_implementation="eager" (a Python loop
over experts with per-expert masks and weight indexing, the implementation of transformers 4.x).

    python3 bench/train_throughput.py                       # both presets: "small" (~25M MoE) and "tiny"
    python3 bench/train_throughput.py --preset small --batch 4 --seq 256 --steps 3 --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from r1kit.models.checkpoint import save_model
from r1kit.models.random_checkpoint import preset_config
from r1kit.models.registry import build_model, num_parameters


def _step(model, ids, hf: bool) -> None:
    logits = model(ids).logits if hf else model(ids)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)


def bench(preset: str, batch: int, seq: int, steps: int, dtype: torch.dtype) -> dict[str, float]:
    import transformers

    config = preset_config("deepseek_v3", preset, vocab_size=1024, max_position_embeddings=max(4096, seq))
    ours = build_model(config, device="cpu", dtype=dtype, seed=0).train()
    models = {"r1kit": ours}
    with tempfile.TemporaryDirectory() as d:
        save_model(ours, d)
        for impl in ("default", "eager"):
            kw = {} if impl == "default" else {"experts_implementation": impl}
            hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype, **kw).train()
            models[f"transformers ({hf.config._experts_implementation})"] = hf
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    with torch.no_grad():  # all models compute the same function
        diff = max((m(ids[:1]).logits - ours(ids[:1])).abs().max().item() for m in list(models.values())[1:])
    print(f"\n[{preset}] {num_parameters(ours) / 1e6:.1f}M params, {config.n_routed_experts} experts "
          f"(top-{config.num_experts_per_tok}), batch {batch}x{seq}, {dtype}, {torch.get_num_threads()} threads; "
          f"max |logit diff| = {diff:.1e}")
    wall, cpu = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0)
    for name, m in models.items():  # warm-up
        _step(m, ids, name != "r1kit")
    for _ in range(steps):
        for name, m in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            _step(m, ids, name != "r1kit")
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    tokens = batch * seq * steps
    tps = {k: tokens / v for k, v in wall.items()}
    # tokens per CPU-second: with one thread, robust to other jobs taking the CPU away (wall time is not)
    tpc = {k: tokens / v for k, v in cpu.items()}
    for name in models:
        ratio = "" if name == "r1kit" else (f"   r1kit/this: {tps['r1kit'] / tps[name]:.2f}x wall, "
                                            f"{tpc['r1kit'] / tpc[name]:.2f}x cpu")
        print(f"  {name:28s} {tps[name]:7.0f} tokens/s  {tpc[name]:7.0f} tokens/cpu-s{ratio}")
    floor = flop_floor(ours, ids, dtype)
    step = {k: v / steps for k, v in wall.items()}
    print(f"  matmul floor: {floor['gflop']:.1f} GFLOP per step (matmuls + attention, forward and backward) at this "
          f"machine's best measured GEMM rate ({floor['gflops']:.0f} GFLOP/s) = {floor['seconds'] * 1e3:.0f} ms; "
          f"r1kit {step['r1kit'] * 1e3:.0f} ms = {floor['seconds'] / step['r1kit']:.0%} of peak. No implementation "
          f"can beat this floor: largest possible ratio vs "
          + ", ".join(f"{k} = {v / floor['seconds']:.2f}x" for k, v in step.items() if k != "r1kit"))
    return tps


def flop_floor(model, ids: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
    """FLOPs of one r1kit training step (counted by torch's FlopCounterMode: mm, bmm, attention, forward and
    backward) and the time they take at the best GEMM rate measured here: a lower bound on any step's time."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, ids, False)
    flops = counter.get_total_flops()
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (1024, 256, 1024), (8192, 256, 128)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        reps = max(3, int(2e10 / (2 * m * k * n)))
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0))
    return {"gflop": flops / 1e9, "gflops": best / 1e9, "seconds": flops / best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["small", "tiny", "both"], default="both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 3 small, 12 tiny)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads (use 1 on a machine busy with other jobs: waiting threads dominate)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    for preset in (["small", "tiny"] if args.preset == "both" else [args.preset]):
        bench(preset, args.batch, args.seq, args.steps or {"small": 3, "tiny": 12}[preset], dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
