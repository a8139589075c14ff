"""Evaluation and distillation: `r1kit eval` and `r1kit distill`, and their Python API.

    from r1kit.eval import evaluate, distill, compare_runs
    results = evaluate(model="runs/grpo/final", tasks=["countdown?numbers=3&n=100&split=test"], n=8, out="runs/ev")
    distill(teacher="runs/grpo/final", tasks=["countdown?numbers=3&n=500"], n=4, out="traces.jsonl")

Modules: config (options), metrics (pass@k, maj@k, statistics), backends (local engine, HTTP), samples (the
append-only logs that make runs resumable), runner (generate + score with the task's own scorer), evaluate
(results.json), report (table, report.md, plots, comparisons), distill (rejection sampling into SFT data), cli.
Imports are lazy so that `import r1kit.eval` stays cheap.
"""
from __future__ import annotations

_LAZY = {
    "evaluate": "r1kit.eval.evaluate",
    "EvalConfig": "r1kit.eval.config",
    "DistillConfig": "r1kit.eval.config",
    "distill": "r1kit.eval.distill",
    "compare_runs": "r1kit.eval.report",
    "pass_at_k": "r1kit.eval.metrics",
    "maj_at_k": "r1kit.eval.metrics",
    "task_metrics": "r1kit.eval.metrics",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'r1kit.eval' has no attribute {name!r}")


__all__ = list(_LAZY)
