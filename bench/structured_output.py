"""The cost of structured outputs per decode step: output tokens/s with and without a JSON schema, same run.

    python bench/structured_output.py            # 16 concurrent streams x 128 tokens, 3 interleaved rounds
    python bench/structured_output.py --quick

Model: the random DeepSeek-V3 "small" preset with its vocabulary padded to --vocab (default 32768, so the mask is
as wide as a real model's is on this scale; the tokenizer itself has 1,024 tokens, which is what llguidance's
lexer walks). Every stream generates exactly --tokens tokens: the prompts do not think (plain completions) so the
whole output is constrained, ignore_eos, and the schema cannot complete early: an array of at least 100,000
free strings. The
unconstrained run samples the same way (temperature 1, same seeds). Rounds alternate plain / constrained so the
VM's drift hits both; printed: tokens/s of each round, the median ratio (goal: constrained >= 0.9 x plain).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 100000}  # never completes early


def make_checkpoint(vocab: int, out: Path) -> Path:
    from r1kit.models.checkpoint import save_model
    from r1kit.models.random_checkpoint import preset_config
    from r1kit.models.registry import build_model
    from r1kit.tokenizer import build_r1_tokenizer, default_corpus

    if (out / "model.safetensors").exists():
        return out
    tok = build_r1_tokenizer(default_corpus(seed=0), 1024, out)
    config = preset_config("deepseek_v3", "small", vocab_size=vocab, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_model(build_model(config, device="cpu", dtype="float32", init=True, seed=0), out)
    return out


def run(llm, streams: int, tokens: int, schema: dict | None) -> float:
    from r1kit import SamplingParams
    from r1kit.engine.structured_output import StructuredOutputsParams

    so = StructuredOutputsParams(json=schema) if schema else None
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=tokens, ignore_eos=True, structured_outputs=so)
              for i in range(streams)]
    prompts = [f"Request {i}: list a few words." for i in range(streams)]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    assert all(len(o.outputs[0].token_ids) == tokens for o in outs), "a stream ended early"
    if schema:
        assert all(o.outputs[0].text.startswith("[") for o in outs), "the schema was not applied"
    return n / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.rounds = 32, 1
    import torch

    from r1kit import LLM

    ckpt = make_checkpoint(args.vocab, Path(tempfile.gettempdir()) / f"r1kit-bench-so-{args.vocab}")
    llm = LLM(str(ckpt), max_num_seqs=args.streams, max_model_len=1024)
    print(f"torch threads {torch.get_num_threads()}, {args.streams} streams x {args.tokens} tokens, "
          f"model vocab {args.vocab}")
    run(llm, args.streams, 8, None)
    run(llm, args.streams, 8, SCHEMA)  # warm-up (kernels, llguidance's tokenizer view)
    ratios = []
    for r in range(args.rounds):
        plain = run(llm, args.streams, args.tokens, None)
        constrained = run(llm, args.streams, args.tokens, SCHEMA)
        ratios.append(constrained / plain)
        print(f"round {r + 1}: plain {plain:7.1f} tok/s   json schema {constrained:7.1f} tok/s   "
              f"ratio {constrained / plain:.3f}")
    print(f"median ratio (json schema / plain): {statistics.median(ratios):.3f}   goal >= 0.900")


if __name__ == "__main__":
    main()
