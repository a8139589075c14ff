"""`r1kit demo`: the whole inference path on a machine with nothing downloaded.

Builds (once) a small random DeepSeek-V3-architecture checkpoint in the Hugging Face layout with an R1-format
tokenizer, loads it back through the same code that loads real checkpoints, and generates with the engine:
chat template with the `<think>` prefill, paged latent KV cache, a thinking budget, and the reasoning/answer split.
The weights are random, so the text is gibberish; everything around it is the real thing. Later versions swap in
r1kit-tiny, a small reasoner trained by r1kit itself.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("R1KIT_CACHE_DIR") or Path.home() / ".cache" / "r1kit") / "demo-deepseek_v3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="where the random checkpoint is written (default: %(default)s)")
    parser.add_argument("--model-type", default="deepseek_v3", help="architecture of the random model (default: %(default)s)")
    parser.add_argument("--preset", default="tiny", help="size preset of the random model (default: %(default)s)")
    parser.add_argument("--prompt", default="What is 12 + 30? Please reason step by step.", help="user message")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-thinking-tokens", type=int, default=24)
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--rebuild", action="store_true", help="recreate the checkpoint even if it exists")


def run(args: argparse.Namespace) -> int:
    from r1kit.engine import LLM, SamplingParams
    from r1kit.models.random_checkpoint import create_random_checkpoint

    out = Path(args.out)
    if args.rebuild or not (out / "config.json").is_file():
        print(f"creating a random {args.model_type} checkpoint ({args.preset}) in {out}")
        create_random_checkpoint(out, model_type=args.model_type, preset=args.preset, seed=0)
    llm = LLM(model=str(out), device=args.device)
    n_params = sum(p.numel() for p in llm.model.parameters())
    print(f"model: {out} ({args.model_type}, {n_params / 1e6:.2f}M parameters, random weights)")
    params = SamplingParams(temperature=0.6, top_p=0.95, seed=0, max_tokens=args.max_tokens,
                            max_thinking_tokens=args.max_thinking_tokens)
    t0 = time.perf_counter()
    [result] = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    completion = result.outputs[0]
    print(f"\nuser: {args.prompt}")
    print(f"\n[thinking] {completion.reasoning!r}")
    print(f"\n[answer]   {completion.content!r}")
    print(f"\n{len(completion.token_ids)} tokens in {dt:.2f}s ({len(completion.token_ids) / dt:.1f} tok/s), "
          f"finish_reason={completion.finish_reason}")
    return 0
