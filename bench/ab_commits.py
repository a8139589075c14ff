"""In-process A/B of two versions of r1kit: the working tree against an earlier commit, on the same weights and
prompts, alternating in one process so that a shared machine's drift hits both alike.

The earlier commit's `r1kit` package is exported with `git archive` into a temporary directory and renamed
`r1kit_before` (its imports rewritten), so both versions are importable side by side. Measured per round, in turn:
    rollout  GRPO's EngineRollout: 8 prompts x G=8 completions x 128 tokens (frozen weights when the version has them)
    serve    LLM.generate of 32 chat prompts x 64 greedy tokens without frozen weights (the server's path)
    train    forward + backward of a [16, 200] token batch
Round 0 is a warm-up (kernel builds); the order alternates each round. Prints each time and the before/after ratio
per round (> 1: the working tree is faster), and whether both produced the same tokens.

    python3 bench/ab_commits.py --before f8d409d --rounds 3
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def export_before(commit: str, where: Path) -> str:
    """`r1kit` at `commit` as the package r1kit_before under `where` (which joins sys.path and PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "r1kit"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    pkg = where / "r1kit_before"
    (where / "r1kit").rename(pkg)
    dotted = re.compile(r"\br1kit\.(?=[a-z_])")
    for path in pkg.rglob("*.py"):
        text = dotted.sub("r1kit_before.", path.read_text())
        text = re.sub(r"^(\s*)from r1kit import", r"\1from r1kit_before import", text, flags=re.MULTILINE)
        text = re.sub(r"^(\s*)import r1kit$", r"\1import r1kit_before", text, flags=re.MULTILINE)
        path.write_text(text)
    sys.path.insert(0, str(where))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))
    return "r1kit_before"


def setup(pkg: str, path: str):
    mod = {name: importlib.import_module(f"{pkg}.{name}") for name in
           ("models.checkpoint", "tokenizer", "train.rollout", "engine.llm", "engine.sampling_params")}
    tok = mod["tokenizer"].load_tokenizer(path)
    model = mod["models.checkpoint"].load_model(path, dtype=torch.float32)
    rollout = mod["train.rollout"].EngineRollout(model, tok, max_model_len=256, max_num_seqs=64)
    served = mod["models.checkpoint"].load_model(path, dtype=torch.float32).eval()
    llm = mod["engine.llm"].LLM(model=served, tokenizer=tok, max_num_seqs=32, max_model_len=256)
    return {"tok": tok, "model": model, "rollout": rollout, "llm": llm, "sp": mod["engine.sampling_params"]}


def one_round(side, prompts, serve_prompts, ids):
    eng = side["rollout"]
    allocate = getattr(eng, "allocate_kv_cache", None) or eng.wake          # (the names before issue 19)
    free = getattr(eng, "free_kv_cache", None) or eng.release_memory
    allocate()
    t0 = time.perf_counter()
    groups = eng.generate(prompts, [{}] * len(prompts), list(range(len(prompts))), 8,
                          [100 + i for i in range(len(prompts))], 128, 1.0, 1.0)
    t_rollout = time.perf_counter() - t0
    free()
    params = side["sp"].SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    t0 = time.perf_counter()
    served = side["llm"].generate(serve_prompts, params, use_tqdm=False)
    t_serve = time.perf_counter() - t0
    side["model"].train()
    t0 = time.perf_counter()
    side["model"](ids).float().logsumexp(-1).mean().backward()
    t_train = time.perf_counter() - t0
    side["model"].zero_grad()
    tokens = ([[s.completion_ids for s in g] for g in groups], [o.outputs[0].token_ids for o in served])
    return {"rollout": t_rollout, "serve": t_serve, "train": t_train}, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    p.add_argument("--preset", default="small", help="deepseek_v3 preset of the random checkpoint")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    from r1kit.models.random_checkpoint import create_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="r1kit-ab-") as tmp:
        before = export_before(a.before, Path(tmp))
        ckpt = str(Path(tmp) / "ckpt")
        create_random_checkpoint(ckpt, model_type="deepseek_v3", preset=a.preset, seed=0)
        sides = {"before": setup(before, ckpt), "after": setup("r1kit", ckpt)}
        tok = sides["after"]["tok"]
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"Using 3, 5 and {i}, make {i + 7}."}],
                                           add_generation_prompt=True, tokenize=True) for i in range(8)]
        serve_prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + {2 * i}?"}],
                                                 add_generation_prompt=True, tokenize=True) for i in range(32)]
        vocab = sides["after"]["model"].config.vocab_size
        ids = torch.randint(0, vocab, (16, 200), generator=torch.Generator().manual_seed(0))
        times = {name: {k: [] for k in ("rollout", "serve", "train")} for name in sides}
        tokens = {}
        print(f"before = {a.before}, after = the working tree ({ROOT}); deepseek_v3-{a.preset}, {a.threads} threads")
        for r in range(a.rounds + 1):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                got, tokens[name] = one_round(sides[name], prompts, serve_prompts, ids)
                if r:
                    for k, v in got.items():
                        times[name][k].append(v)
                load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
                print(f"round {r} {name:6s}: " + "  ".join(f"{k} {v:6.2f}s" for k, v in got.items())
                      + f"  (load {load})", flush=True)
    print(f"same rollout completions: {tokens['before'][0] == tokens['after'][0]}; "
          f"same served tokens: {tokens['before'][1] == tokens['after'][1]}")
    for k in ("rollout", "serve", "train"):
        b, af = times["before"][k], times["after"][k]
        ratio = [x / y for x, y in zip(b, af)]
        print(f"{k:8s} before {statistics.median(b):6.2f}s ({min(b):.2f}-{max(b):.2f})  after "
              f"{statistics.median(af):6.2f}s ({min(af):.2f}-{max(af):.2f})  before/after per round "
              f"{min(ratio):.2f}-{max(ratio):.2f}, median {statistics.median(ratio):.2f}")


if __name__ == "__main__":
    main()
