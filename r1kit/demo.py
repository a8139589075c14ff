"""`r1kit demo`: r1kit-tiny, the small reasoner r1kit trains itself, thinking through problems it never saw.

Runs a handful of held-out problems (test splits: no training set holds them) through the model with the engine,
shows each one's thinking and answer, checks the answers with the tasks' own verifiers and says how many were right.
The problems come from the model directory's r1kit_tasks.json (written by recipes/tiny.sh: the task specs a model
was trained and evaluated on), else from r1kit-tiny's task families. Any model works: `r1kit demo --model DIR`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

# r1kit-tiny's task families, held out (used when the model directory names none)
DEFAULT_EVAL_TASKS = ("arithmetic?ops=+&digits=4&min_digits=2&phrasing=varied&split=test",
                      "countdown?numbers=3&max_value=10&split=test",
                      "reasoning_gym:chain_sum?min_terms=3&max_terms=5&min_digits=1&max_digits=1&split=test")
DIM, RESET, GREEN, RED = "\033[2m", "\033[0m", "\033[32m", "\033[31m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint directory, hub id or builtin name "
                        "(default: r1kit-tiny)")
    parser.add_argument("--per-task", type=int, default=2, help="problems per task family (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="which held-out problems (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=512, help="per answer, thinking included "
                        "(default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")


def demo_tasks(model_dir, per_task: int, seed: int) -> list:
    """(task, example) pairs: per_task held-out problems of each evaluation task of the model."""
    from r1kit.tasks import load_task

    specs = list(DEFAULT_EVAL_TASKS)
    meta = model_dir / "r1kit_tasks.json"
    if meta.is_file():
        specs = json.loads(meta.read_text()).get("eval") or specs
    out = []
    for spec in specs:
        task = load_task(spec, n=per_task, seed=seed, split="test")
        out += [(task, ex) for ex in task]
    return out


def run(args: argparse.Namespace) -> int:
    from r1kit.engine import LLM, SamplingParams
    from r1kit.models.builtin import resolve_model
    from r1kit.models.registry import num_parameters
    from r1kit.server.cli import default_model
    from r1kit.train.task_data import prompt_ids

    name = args.model or default_model()
    model_dir = resolve_model(name)
    llm = LLM(model=str(model_dir), device=args.device)
    cfg = llm.model.config
    print(f"{name}: {num_parameters(llm.model) / 1e6:.2f}M-parameter {cfg.model_type} "
          f"({'MLA + DeepSeekMoE, ' if cfg.model_type == 'deepseek_v3' else ''}trained by r1kit; docs/r1kit-tiny.md)")
    pairs = demo_tasks(model_dir, args.per_task, args.seed)
    print(f"{len(pairs)} held-out problems it never saw in training:\n")
    params = SamplingParams(temperature=args.temperature, top_p=1.0 if args.temperature == 0 else 0.95,
                            max_tokens=args.max_tokens, seed=args.seed)
    t0 = time.perf_counter()
    outs = llm.generate([prompt_ids(llm.tokenizer, ex, 1 << 20) for _, ex in pairs], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    tty = sys.stdout.isatty()
    dim, reset = (DIM, RESET) if tty else ("", "")
    right, tokens = 0, 0
    for i, ((task, ex), out) in enumerate(zip(pairs, outs), 1):
        c = out.outputs[0]
        ok = task.score(c.text, ex) == 1.0
        right += ok
        tokens += len(c.token_ids)
        mark = ((GREEN + "right" + RESET) if tty else "right") if ok else ((RED + "wrong" + RESET) if tty else "wrong")
        print(f"[{i}/{len(pairs)}] {ex['question']}")
        print(dim + "  thinking: " + (c.reasoning or "").strip().replace("\n", "\n            ") + reset)
        print(f"  answer:   {(c.content or '').strip() or '(none)'}   {mark} (expected {ex['answer']})\n")
    print(f"{right}/{len(pairs)} right; {tokens} tokens in {dt:.1f}s ({tokens / max(dt, 1e-9):.0f} tokens/s)")
    return 0
