"""Evaluation speed: `r1kit eval` on its engine vs lm-evaluation-harness's `hf` model (transformers generate), in
the same run, on the same model and problems.

    python bench/eval_speed.py                 # 64 problems, 256 tokens, greedy; lm-eval at its default batch size
    python bench/eval_speed.py --repeats 3 --lm-eval-batch-size 1 64
    python bench/eval_speed.py --quick         # 8 problems, 64 tokens: a smoke run

Model: a random DeepSeek-V3-architecture checkpoint, r1kit's "small" preset (~25M parameters: MLA + 64 routed
experts, 8 active). Problems: the first N of examples/eval/arithmetic.jsonl with the R1-distill instruction, the
model's chat template (thinking on), greedy, at most --max-tokens generated tokens each. Both tools run as the
commands a user types (process start, model load, generation, scoring, writing results: the wall time of the
command), one after the other, alternating, --repeats times. lm-eval uses examples/eval/lm_eval/r1kit_arithmetic.yaml
with `until` set to a string that never occurs (its default "\\n\\n" would stop transformers inside the reasoning)
and think_end_token=</think>. The script checks that both generated the same text (same greedy tokens: same work)
and prints the wall times and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "eval" / "arithmetic.jsonl"


def checkpoint(cache: Path) -> Path:
    from r1kit.models.random_checkpoint import create_random_checkpoint

    out = cache / "bench-eval-deepseek_v3-small"
    if not (out / "config.json").exists():
        create_random_checkpoint(out, "deepseek_v3", "small", seed=0)
    return out


def n_params(ckpt: Path) -> int:
    from safetensors.numpy import load_file

    return sum(v.size for v in load_file(str(ckpt / "model.safetensors")).values())


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lm-eval-batch-size", nargs="+", default=["1"],
                    help="lm-eval --batch_size values to time (default: 1, lm-eval's default)")
    ap.add_argument("--quick", action="store_true", help="8 problems, 64 tokens")
    args = ap.parse_args()
    if args.quick:
        args.problems, args.max_tokens = 8, 64
    cache = Path(os.environ.get("R1KIT_CACHE_DIR", Path.home() / ".cache" / "r1kit"))
    ckpt = checkpoint(cache)
    work = Path(tempfile.mkdtemp(prefix="r1kit-bench-eval-"))
    data = work / "problems.jsonl"
    data.write_text("".join(DATA.read_text().splitlines(keepends=True)[:args.problems]))
    tasks = work / "tasks"
    tasks.mkdir()
    shutil.copy(REPO / "examples" / "eval" / "lm_eval" / "utils.py", tasks)
    yaml = (REPO / "examples" / "eval" / "lm_eval" / "r1kit_arithmetic.yaml").read_text()
    yaml = yaml.replace("test: examples/eval/arithmetic.jsonl", f"test: {data}")
    yaml = yaml.replace('until: ["\\n\\n"]', 'until: ["<never occurs>"]').replace("max_gen_toks: 512",
                                                                                 f"max_gen_toks: {args.max_tokens}")
    (tasks / "r1kit_arithmetic.yaml").write_text(yaml)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "hf"), "PYTHONPATH": os.pathsep.join([str(REPO),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    print(f"model: {ckpt} ({n_params(ckpt) / 1e6:.1f}M parameters), {args.problems} problems, "
          f"{args.max_tokens} tokens, greedy; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads default")

    def r1kit_cmd(i):
        return [sys.executable, "-m", "r1kit", "eval", "--model", str(ckpt), "--task", str(data), "-n", "1",
                "--temperature", "0", "--max-tokens", str(args.max_tokens), "--out", str(work / f"r1kit-{i}"),
                "--no-progress"]

    def lm_cmd(i, bs):
        return ["lm_eval", "--model", "hf", "--model_args",
                f"pretrained={ckpt},dtype=float32,think_end_token=</think>", "--device", "cpu", "--tasks", "r1kit_arithmetic",
                "--include_path", str(tasks), "--apply_chat_template", "--batch_size", str(bs), "--output_path",
                str(work / f"lm-{bs}-{i}"), "--log_samples"]

    times: dict[str, list[float]] = {"r1kit": [], **{f"lm-eval bs={bs}": [] for bs in args.lm_eval_batch_size}}
    for i in range(args.repeats):
        order = [("r1kit", r1kit_cmd(i))] + [(f"lm-eval bs={bs}", lm_cmd(i, bs)) for bs in args.lm_eval_batch_size]
        if i % 2:
            order.reverse()  # alternate who goes first: the machine drifts
        for name, cmd in order:
            times[name].append(run(cmd, env))
            print(f"run {i + 1}: {name:<14} {times[name][-1]:8.1f} s", flush=True)
    # same work: the answers (text after </think>, or everything when thinking never closed) must match
    ours = {r["problem"]: r for r in map(json.loads, open(work / "r1kit-0" / "samples.jsonl"))}
    tokens = sum(r["completion_tokens"] for r in ours.values())
    for bs in args.lm_eval_batch_size:
        theirs = [json.loads(x) for x in open(next((work / f"lm-{bs}-0").rglob("samples_*.jsonl")))]
        same = 0
        for s in theirs:
            r = ours[s["doc_id"]]
            want = r["answer"] if "</think>" in r["completion"] else r["completion"]
            same += (s["resps"][0][0] or "").strip() == want.strip()
        print(f"lm-eval bs={bs}: {same}/{len(theirs)} generations identical to r1kit's")
    print(f"r1kit generated {tokens} tokens ({tokens / len(ours):.0f} per problem)")
    base = statistics.median(times["r1kit"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<14} median {med:7.1f} s  (runs: {', '.join(f'{t:.1f}' for t in ts)})  "
              f"r1kit is {med / base:.2f}x faster" if name != "r1kit" else
              f"{name:<14} median {med:7.1f} s  (runs: {', '.join(f'{t:.1f}' for t in ts)})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
