"""Training throughput (forward + backward tokens/s) of r1kit's DeepSeek-V3 vs transformers' DeepseekV3ForCausalLM.

Same config, same weights (r1kit saves, transformers loads the files), same batch, same dtype, in one process;
the two models are timed in alternation so that background load hits both alike. Prints tokens/s and the ratio.

    python3 bench/train_throughput.py                       # both presets: "small" (~25M MoE) and "tiny"
    python3 bench/train_throughput.py --preset small --batch 8 --seq 256 --steps 5
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


def bench(preset: str, batch: int, seq: int, steps: int, dtype: torch.dtype) -> tuple[float, float]:
    import transformers

    config = preset_config("deepseek_v3", preset, vocab_size=1024, max_position_embeddings=max(4096, seq))
    ours = build_model(config, device="cpu", dtype=dtype, seed=0).train()
    with tempfile.TemporaryDirectory() as d:
        save_model(ours, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    with torch.no_grad():  # same function, so timing compares like with like
        diff = (hf(ids[:1]).logits - ours(ids[:1])).abs().max().item()
    print(f"\n[{preset}] {num_parameters(ours) / 1e6:.1f}M params, {config.n_routed_experts} experts "
          f"(top-{config.num_experts_per_tok}), batch {batch}x{seq}, {dtype}, {torch.get_num_threads()} threads; "
          f"max |logit diff| = {diff:.1e}")
    times = {"r1kit": 0.0, "transformers": 0.0}
    for name, m in (("r1kit", ours), ("transformers", hf)):  # warm-up
        _step(m, ids, name == "transformers")
    for _ in range(steps):
        for name, m in (("r1kit", ours), ("transformers", hf)):
            t0 = time.perf_counter()
            _step(m, ids, name == "transformers")
            times[name] += time.perf_counter() - t0
    tps = {k: batch * seq * steps / v for k, v in times.items()}
    print(f"  r1kit        {tps['r1kit']:9.0f} tokens/s")
    print(f"  transformers {tps['transformers']:9.0f} tokens/s")
    print(f"  ratio r1kit / transformers = {tps['r1kit'] / tps['transformers']:.2f}x")
    return tps["r1kit"], tps["transformers"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["small", "tiny", "both"], default="both")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    for preset in (["small", "tiny"] if args.preset == "both" else [args.preset]):
        bench(preset, args.batch, args.seq, args.steps, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
