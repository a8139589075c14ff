"""Sampler throughput: r1kit's batched Sampler vs transformers' logits processors + torch.multinomial (the path
`generate(do_sample=True)` takes), on the same logits in the same run.

    python3 bench/sampler.py [--batch 64] [--vocab 151936] [--device auto] [--iters 10]

Logits are random with a peaked head (20 tokens lifted by +10), the shape of a trained model's next-token
distribution, so top_p cuts after a few tokens as it does in practice. Prints ms per step and the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopPLogitsWarper)

from r1kit.device import resolve_device
from r1kit.engine.sampler import Sampler
from r1kit.engine.sampling_params import SamplingParams


def timed(fn, iters: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(resolve_device(args.device))
    g = torch.Generator().manual_seed(0)
    B, V = args.batch, args.vocab
    logits = torch.randn(B, V, generator=g)
    logits[:, torch.randint(V, (20,), generator=g)] += 10.0
    logits = logits.to(device)
    prompt = torch.randint(V, (B, args.prompt_len), generator=g)
    output = torch.randint(V, (B, args.output_len), generator=g)
    history = torch.cat([prompt, output], dim=1).to(device)
    prompt_ids, output_ids = prompt.tolist(), output.tolist()

    cases = {
        "T=0.6 top_p=0.95 (R1 protocol)": (dict(temperature=0.6, top_p=0.95),
                                           [TemperatureLogitsWarper(0.6), TopPLogitsWarper(0.95)]),
        "  + repetition_penalty=1.1": (dict(temperature=0.6, top_p=0.95, repetition_penalty=1.1),
                                       [RepetitionPenaltyLogitsProcessor(1.1), TemperatureLogitsWarper(0.6),
                                        TopPLogitsWarper(0.95)]),
        "T=1.0 (no truncation)": (dict(temperature=1.0), [TemperatureLogitsWarper(1.0)]),
    }
    sampler = Sampler(seed=0)
    print(f"batch {B}, vocab {V}, device {device}, history {args.prompt_len}+{args.output_len} tokens")
    print(f"{'case':34s} {'r1kit ms':>9s} {'HF ms':>9s} {'HF/r1kit':>9s}")
    for name, (kw, procs) in cases.items():
        params = [SamplingParams(**kw)] * B
        procs = LogitsProcessorList(procs)
        ours = timed(lambda: sampler(logits, params, None, prompt_ids, output_ids), args.iters, device)
        peer = timed(lambda: torch.multinomial(procs(history, logits.clone()).softmax(-1), 1), args.iters, device)
        print(f"{name:34s} {ours:9.1f} {peer:9.1f} {peer / ours:9.2f}x")


if __name__ == "__main__":
    main()
