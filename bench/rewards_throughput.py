"""Reward throughput: r1kit's parallel scoring vs the naive single-process loop, on the same completions.

math: 1,024 completions (right and wrong answers in varied forms) for arithmetic and countdown-free math golds.
  peer: a plain loop calling math_verify.parse/verify in this process (what a simple reward function does;
        note it has no hard timeout and only works on the main thread).
  r1kit: `math_reward_batch` (math-verify worker pool, one worker per core, hard timeout).
code: 1,024 HumanEval completions (canonical solutions and broken ones, cycled).
  peer: the same sandbox called one completion at a time in a loop.
  r1kit: `score_batch(code_reward, ..., workers)` (sandboxes run concurrently).
Peer and r1kit run on alternating quarters of the work, so load from others on a shared machine hits both alike.

    python3 bench/rewards_throughput.py [--n 1024] [--workers N] [--only math|code]
"""
from __future__ import annotations

import argparse
import os
import random
import time


def math_workload(n: int):
    from r1kit.tasks import load_task

    task = load_task(f"arithmetic?digits=3&n={min(n, 500)}&seed=7")
    rng = random.Random(0)
    completions, examples = [], []
    for i in range(n):
        ex = dict(task[i % len(task)], verifier="math")
        v = int(ex["answer"])
        form = rng.choice([f"{v}", f"{v}.0", f"\\frac{{{2 * v}}}{{2}}", f"{v + 1}", f"{v} + 0", f"{v}\\cdot 1"])
        completions.append(f"Let me work it out.\n</think>\n\nThe answer is $\\boxed{{{form}}}$.")
        examples.append(ex)
    return completions, examples


def code_workload(n: int):
    from r1kit.tasks import load_task

    task = load_task("humaneval")
    completions, examples = [], []
    for i in range(n):
        ex = task[i % len(task)]
        body = ex["answer"] if i % 2 == 0 else "    return None\n"
        completions.append("I'll write it.\n</think>\n" + body)
        examples.append(ex)
    return completions, examples


def _interleaved(serial_fn, parallel_fn, completions, examples, rounds: int = 4):
    """Time the peer and r1kit on alternating slices, so that load from others on a shared machine hits both alike."""
    t_serial = t_parallel = 0.0
    scores_serial, scores_parallel = [], []
    step = -(-len(completions) // rounds)
    for i in range(0, len(completions), step):
        c, e = completions[i:i + step], examples[i:i + step]
        start = time.perf_counter()
        scores_serial += serial_fn(c, e)
        t_serial += time.perf_counter() - start
        start = time.perf_counter()
        scores_parallel += parallel_fn(c, e)
        t_parallel += time.perf_counter() - start
    assert scores_parallel == scores_serial, "parallel and serial scores differ"
    return t_serial, t_parallel, sum(scores_parallel)


def bench_math(n: int, workers: int):
    from math_verify import parse, verify

    from r1kit.rewards import answer_text, math_reward_batch
    from r1kit.rewards.math_reward import _gold_text, default_verifier

    def serial(completions, examples):
        return [float(verify(parse(_gold_text(e["answer"])), parse(answer_text(c))))
                for c, e in zip(completions, examples)]

    completions, examples = math_workload(n)
    default_verifier()  # pool sized to the cores; warm it up outside the timing
    math_reward_batch(completions[:workers * 4], examples[:workers * 4], workers=workers)
    return _interleaved(serial, lambda c, e: math_reward_batch(c, e, workers=workers), completions, examples)


def bench_code(n: int, workers: int):
    from r1kit.rewards import code_reward, score_batch

    completions, examples = code_workload(n)
    return _interleaved(lambda c, e: [code_reward(x, y) for x, y in zip(c, e)],
                        lambda c, e: score_batch(code_reward, c, e, workers=workers), completions, examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=0, help="threads for score_batch (default: 2 per core for code, "
                    "1 per core for math)")
    ap.add_argument("--only", choices=["math", "code"])
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"{args.n} completions, {cores} cores")
    print(f"{'reward':8s} {'serial c/s':>11s} {'r1kit c/s':>10s} {'ratio':>6s} {'correct':>8s}")
    for name, fn, default_workers in (("math", bench_math, cores), ("code", bench_code, 2 * cores)):
        if args.only and args.only != name:
            continue
        t_serial, t_parallel, correct = fn(args.n, args.workers or default_workers)
        print(f"{name:8s} {args.n / t_serial:11.1f} {args.n / t_parallel:10.1f} {t_serial / t_parallel:6.2f}x "
              f"{int(correct):8d}", flush=True)


if __name__ == "__main__":
    main()
