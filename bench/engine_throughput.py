"""Engine throughput: r1kit's LLM against transformers on the same random checkpoints, in the same run.

    python bench/engine_throughput.py            # the full benchmark (64 requests, prompts 32-512, 256 out)
    python bench/engine_throughput.py --quick    # a few minutes on a 2-core CPU (fewer, shorter requests)

Models: (a) a random DeepSeek-V3-architecture model (MLA + DeepSeekMoE, ~74M parameters), (b) a random
Qwen2-architecture model (~67M). Every system gets the same prompts (random token ids) and generates exactly
`--output-len` tokens (ignore_eos). Systems: r1kit (continuous batching, paged KV), transformers `generate`
(one padded batch, its own KV cache), transformers' continuous batching `generate_batch` when present.
Printed: output tokens/s, mean TTFT, the ratio of r1kit to the best transformers path; r1kit's decode linear-layer
FLOP/s as a fraction of plain torch matmuls of the same shapes timed in the same run; TTFT of a request whose
1,024-token prefix is cached vs uncached; KV bytes per token (MLA vs an MHA cache of the same head dims).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch

MODELS = {  # name -> (model_type, config overrides on the "small" preset)
    "a": ("deepseek_v3", dict(vocab_size=16384, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                              q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
                              v_head_dim=64, intermediate_size=1536, moe_intermediate_size=256, n_routed_experts=16,
                              num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2)),
    "b": ("qwen2", dict(vocab_size=16384, hidden_size=640, num_hidden_layers=12, num_attention_heads=10,
                        num_key_value_heads=2, intermediate_size=1920)),
}


def make_checkpoint(name: str, cache_dir: Path) -> Path:
    from r1kit.models.checkpoint import save_model
    from r1kit.models.random_checkpoint import preset_config
    from r1kit.models.registry import build_model
    from r1kit.tokenizer import build_r1_tokenizer, default_corpus

    model_type, overrides = MODELS[name]
    out = cache_dir / f"bench-{name}-{model_type}"
    if (out / "model.safetensors").exists() or (out / "model.safetensors.index.json").exists():
        return out
    tok = build_r1_tokenizer(default_corpus(seed=0), 1024, out)
    config = preset_config(model_type, "small", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, **overrides)
    save_model(build_model(config, device="cpu", dtype="float32", init=True, seed=0), out)
    return out


def make_prompts(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, min(vocab, 1000)) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def run_r1kit(llm, prompts, out_len):
    from r1kit import SamplingParams

    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, p in enumerate(prompts):
        engine.add_request(f"b{i}", p, params)
    ttft, n_out, decode_steps = {}, 0, []
    while engine.has_unfinished_requests():
        s = time.perf_counter()
        outs = engine.step()
        for o in outs:
            if o.request_id not in ttft and o.outputs[0].token_ids:
                ttft[o.request_id] = time.perf_counter() - t0
            if o.finished:
                n_out += len(o.outputs[0].token_ids)
        if not engine.scheduler.waiting and len(outs) == len(engine.scheduler.running) == len(prompts):
            decode_steps.append(time.perf_counter() - s)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tok_s": n_out / elapsed, "tok_cpu_s": n_out / cpu, "ttft": sum(ttft.values()) / len(ttft),
            "elapsed": elapsed,
            "decode_step_s": sorted(decode_steps)[len(decode_steps) // 2] if decode_steps else None}


def run_hf_generate(model, prompts, out_len, pad_id):
    from transformers import LogitsProcessor, LogitsProcessorList

    class FirstToken(LogitsProcessor):
        def __init__(self):
            self.t = None

        def __call__(self, input_ids, scores):
            self.t = self.t or time.perf_counter()
            return scores

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    first = FirstToken()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=out_len, do_sample=False, pad_token_id=pad_id,
                             eos_token_id=None, logits_processor=LogitsProcessorList([first]))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_out = (out.shape[1] - width) * len(prompts)
    return {"tok_s": n_out / elapsed, "tok_cpu_s": n_out / cpu, "ttft": first.t - t0, "elapsed": elapsed}


def run_hf_continuous(model, prompts, out_len):
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        return None
    cfg = GenerationConfig(max_new_tokens=out_len, do_sample=False, eos_token_id=None)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        res = model.generate_batch(prompts, generation_config=cfg, record_timestamps=True, warmup=False)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    outs = list(res.values())
    failed = [o for o in outs if o.error is not None or len(o.generated_tokens) < out_len]
    if failed or not outs:
        err = failed[0].error if failed else "no outputs"
        return {"error": f"{len(failed)}/{len(outs)} requests failed: {str(err)[:200]}"}
    n_out = sum(len(o.generated_tokens) for o in outs)
    ttfts = [o.timestamps[0] - t0 for o in outs if o.timestamps]
    return {"tok_s": n_out / elapsed, "tok_cpu_s": n_out / cpu, "elapsed": elapsed,
            "ttft": sum(ttfts) / len(ttfts) if ttfts else float("nan")}


def decode_matmul_fraction(llm, prompts, reps: int = 3):
    """Time one decode step of the whole batch vs torch matmuls of its linear layers' shapes (same rows)."""
    from r1kit import SamplingParams

    engine, shapes = llm.engine, []
    for i, p in enumerate(prompts):
        engine.add_request(f"f{i}", p, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    while engine.scheduler.waiting or any(s.num_uncomputed > 1 for s in engine.scheduler.running):
        engine.step()
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append((a[0].reshape(-1, a[0].shape[-1]).shape[0],
                                                                     m.weight)))
             for m in llm.model.modules() if isinstance(m, torch.nn.Linear)]
    engine.step()
    for h in hooks:
        h.remove()
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - s)
    for i in range(len(prompts)):
        engine.abort_request(f"f{i}")
    flops = sum(2 * rows * w.shape[0] * w.shape[1] for rows, w in shapes)
    xs = [(torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device), w) for rows, w in shapes]
    mm = []
    for _ in range(reps):
        s = time.perf_counter()
        for x, w in xs:
            torch.matmul(x, w.t())
        mm.append(time.perf_counter() - s)
    step, ideal = min(times), min(mm)
    return {"linear_flops_per_step": flops, "step_s": step, "flop_s": flops / step, "matmul_flop_s": flops / ideal,
            "fraction": ideal / step}


def prefix_ttft(llm, prefix_len: int = 1024, reps: int = 3):
    """TTFT of a request whose first prefix_len tokens are cached vs the same request with nothing cached."""
    from r1kit import SamplingParams

    rng = random.Random(1)
    prefix = [rng.randrange(3, 1000) for _ in range(prefix_len)]
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    def ttft(prompt):
        s = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        return time.perf_counter() - s

    uncached, cached = [], []
    for r in range(reps):
        llm.reset_prefix_cache()
        uncached.append(ttft(prefix + [5 + r] * 16))
        llm.generate([prefix + [7] * 16], params, use_tqdm=False)  # fills the cache with the prefix
        cached.append(ttft(prefix + [9 + r] * 16))
    return {"uncached_s": min(uncached), "cached_s": min(cached), "ratio": min(cached) / min(uncached)}


def kv_bytes(model) -> dict:
    spec, cfg = model.kv_cache_spec(), model.config
    elt = torch.empty((), dtype=spec.dtype).element_size()
    if cfg.model_type == "deepseek_v3":
        mha = cfg.num_hidden_layers * cfg.num_attention_heads * (
            cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * elt
    else:
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        mha = cfg.num_hidden_layers * cfg.num_attention_heads * 2 * head_dim * elt
    return {"r1kit_bytes_per_token": spec.bytes_per_token, "mha_bytes_per_token": mha,
            "fraction": spec.bytes_per_token / mha}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 requests, prompts 32-128, 32 output tokens")
    ap.add_argument("--models", default="a,b", help="comma list of a (DeepSeek-V3 arch), b (Qwen2 arch)")
    ap.add_argument("--num-requests", type=int)
    ap.add_argument("--min-prompt", type=int)
    ap.add_argument("--max-prompt", type=int)
    ap.add_argument("--output-len", type=int)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for every system (1 avoids thread stalls on a busy shared machine)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--skip", default="", help="comma list of systems to skip: hf_generate, hf_continuous")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "r1kit-bench"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    n, lo, hi, out_len = (16, 32, 128, 32) if args.quick else (64, 32, 512, 256)
    n, lo, hi = args.num_requests or n, args.min_prompt or lo, args.max_prompt or hi
    out_len = args.output_len or out_len
    skip = set(filter(None, args.skip.split(",")))
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from r1kit import LLM
    from r1kit.device import resolve_device, resolve_dtype

    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    print(f"device={dev} dtype={dtype} threads={torch.get_num_threads()} requests={n} prompts={lo}-{hi} "
          f"output={out_len}")
    results = {}
    for name in args.models.split(","):
        path = make_checkpoint(name, Path(args.cache_dir))
        llm = LLM(str(path), device=dev, dtype=dtype, max_num_seqs=max(n, 1), max_model_len=max(hi + out_len, 1024 + 16) + 64,
                  kv_cache_memory=None if dev.type == "cuda" else 2 << 30, max_num_batched_tokens=4096)
        n_params = sum(p.numel() for p in llm.model.parameters())
        prompts = make_prompts(n, lo, hi, llm.model.config.vocab_size)
        llm.generate(prompts[:2], None, use_tqdm=False)  # warm-up
        res = {"model_type": llm.model.config.model_type, "params": n_params}
        res["r1kit"] = run_r1kit(llm, prompts, out_len)
        llm.reset_prefix_cache()
        res["decode"] = decode_matmul_fraction(llm, prompts)
        res["prefix"] = prefix_ttft(llm)
        res["kv"] = kv_bytes(llm.model)
        llm.free_kv_cache()
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev).eval()
        if "hf_generate" not in skip:
            res["hf_generate"] = run_hf_generate(hf, prompts, out_len, llm.tokenizer.pad_token_id or 0)
        if "hf_continuous" not in skip:
            try:
                res["hf_continuous"] = run_hf_continuous(hf, prompts, out_len)
            except Exception as e:  # not supported on this device / version
                res["hf_continuous"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        del hf, llm
        best = max((res[k]["tok_s"] for k in ("hf_generate", "hf_continuous") if res.get(k) and "tok_s" in res[k]),
                   default=None)
        res["ratio_vs_best_hf"] = res["r1kit"]["tok_s"] / best if best else None
        best_cpu = max((res[k]["tok_cpu_s"] for k in ("hf_generate", "hf_continuous")
                        if res.get(k) and "tok_cpu_s" in res[k]), default=None)
        res["cpu_ratio_vs_best_hf"] = res["r1kit"]["tok_cpu_s"] / best_cpu if best_cpu else None
        results[name] = res
        report(name, res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(name, res):
    print(f"\n== ({name}) {res['model_type']}, {res['params'] / 1e6:.1f}M parameters")
    for system in ("r1kit", "hf_generate", "hf_continuous"):
        r = res.get(system)
        if r is None:
            continue
        if "error" in r:
            print(f"  {system:14s} unavailable: {r['error']}")
            continue
        print(f"  {system:14s} {r['tok_s']:9.1f} output tok/s ({r['tok_cpu_s']:7.1f} per CPU-s)   "
              f"mean TTFT {r['ttft']:7.2f} s   total {r['elapsed']:.1f} s")
    if res["ratio_vs_best_hf"]:
        print(f"  r1kit / best transformers: {res['ratio_vs_best_hf']:.2f}x wall clock, "
              f"{res['cpu_ratio_vs_best_hf']:.2f}x per CPU-second")
    d = res["decode"]
    print(f"  decode step: {d['flop_s'] / 1e9:.1f} GFLOP/s (linear layers) = {d['fraction']:.0%} of torch matmuls "
          f"of the same shapes ({d['matmul_flop_s'] / 1e9:.1f} GFLOP/s)")
    p = res["prefix"]
    print(f"  TTFT with a cached 1,024-token prefix: {p['cached_s'] * 1e3:.0f} ms vs {p['uncached_s'] * 1e3:.0f} ms "
          f"uncached ({p['ratio']:.0%})")
    k = res["kv"]
    print(f"  KV bytes/token: {k['r1kit_bytes_per_token']:,} vs MHA with the same head dims "
          f"{k['mha_bytes_per_token']:,} ({k['fraction']:.1%})")


if __name__ == "__main__":
    main()
