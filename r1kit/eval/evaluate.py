"""`evaluate()`: score a model on tasks and write the run directory (the Python side of `r1kit eval`).

    from r1kit.eval import evaluate
    results = evaluate(model="runs/grpo/final", tasks=["arithmetic?digits=4&n=100&split=test"], n=8, out="runs/ev")
    results["tasks"]["arithmetic?digits=4&n=100&split=test"]["pass@1"]

The run directory holds run.json (the generation settings, written first: a resumed run must match them),
samples.jsonl (append-only, one scored sample per line), results.json, report.md and the plots. results.json's
layout is documented in docs/eval.md and versioned by its "schema" number.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from r1kit.config import atomic_write_text, build_config
from r1kit.errors import UserError
from r1kit.eval.config import GENERATION_KEYS, EvalConfig, GenerationConfig
from r1kit.eval.metrics import accuracy_by_length, output_tokens_per_s, task_metrics
from r1kit.eval.runner import check_resumable, generate, load_problems
from r1kit.eval.samples import JsonlLog

SCHEMA = 1


def make_backend(cfg: GenerationConfig, llm=None, clock: Callable[[], float] = time.perf_counter):
    from r1kit.eval.backends import HTTPBackend, LocalBackend

    if cfg.base_url is not None:
        return HTTPBackend(cfg, clock=clock)
    return LocalBackend(cfg, llm=llm, clock=clock)


def default_out(cfg: GenerationConfig, root: str = "runs/eval") -> str:
    name = cfg.model if cfg.model is not None else (cfg.served_model or re.sub(r"^https?://", "", cfg.base_url))
    return str(Path(root) / (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name).rstrip("/")).name) or "model"))


def settings_of(cfg: GenerationConfig) -> dict[str, Any]:
    """The resolved settings recorded with a run (never the API key)."""
    d = dataclasses.asdict(cfg)
    d.pop("api_key", None)
    return d


def open_run(meta: Path, cfg: GenerationConfig, log_path: Path) -> JsonlLog:
    """The run's sample log, after checking that a run already there (its `meta` file) used the same generation
    settings; a new run writes `meta` first."""
    mine = {k: settings_of(cfg)[k] for k in GENERATION_KEYS}
    if meta.is_file():
        theirs = json.loads(meta.read_text()).get("generation", {})
        diff = [k for k in GENERATION_KEYS if theirs.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise UserError(f"{meta.parent} holds a run with other settings ({k}: {theirs.get(k)!r} there, "
                            f"{mine[k]!r} now); use another output location to start a new run, or the old settings "
                            "to resume it")
    else:
        from r1kit import __version__

        atomic_write_text(meta, json.dumps({"r1kit_version": __version__, "generation": mine}, indent=2) + "\n")
    return JsonlLog(log_path)


def evaluate(config: EvalConfig | None = None, *, llm=None, backend=None,
             clock: Callable[[], float] = time.perf_counter, progress: bool = True, report: bool = True,
             **options) -> dict:
    """Evaluate and return the results dict (also written to `out`/results.json when `out` is set).

    Options are EvalConfig's fields (`model=`, `tasks=[...]`, `n=`, ...), or pass a built `config`. `llm` reuses an
    already loaded `r1kit.LLM` (then `model` only names it in the results); `backend` and `clock` replace the
    generation backend and the clock (tests)."""
    if config is None:
        if llm is not None:
            options.setdefault("model", "in-memory")
        config = build_config(EvalConfig, overrides=options)
    elif options:
        config = dataclasses.replace(config, **options)
    cfg = config
    problems = load_problems(cfg)
    backend = backend or make_backend(cfg, llm=llm, clock=clock)
    out = Path(cfg.out) if cfg.out else None
    log = open_run(out / "run.json", cfg, out / "samples.jsonl") if out is not None else None
    try:
        if log is not None:
            check_resumable(log.records, problems, str(log.path))
        start = clock()
        records, run = generate(cfg, backend, problems, log, progress=progress)
        wall = clock() - start
    finally:
        if log is not None:
            log.close()
    results = summarize(cfg, backend.describe(), problems, records, wall, run)
    if out is not None:
        atomic_write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        if report:
            from r1kit.eval.report import write_report

            write_report(out, results, records)
    return results


def summarize(cfg: GenerationConfig, model: dict, problems: dict, records: list[dict], wall_s: float,
              run: int) -> dict:
    """The results dict (docs/eval.md: results.json) from every record of the run."""
    from r1kit import __version__

    tasks = {}
    by_problem: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        by_problem.setdefault((r["task"], r["problem"]), []).append(r)
    for spec, ps in problems.items():
        groups = [sorted(by_problem.get((spec, p.index), []), key=lambda r: r["sample"]) for p in ps]
        missing = sum(cfg.n - len(g) for g in groups)
        if missing:
            raise UserError(f"task {spec!r}: {missing} samples are missing; run the same command again to finish")
        flat = [r for g in groups for r in g]
        tasks[spec] = {**task_metrics(groups), "accuracy_by_reasoning_length": accuracy_by_length(flat)}
    return {
        "schema": SCHEMA,
        "r1kit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "settings": settings_of(cfg),
        "tasks": tasks,
        "totals": {"samples": len(records), "generated_now": sum(r["run"] == run for r in records), "wall_s": wall_s,
                   "output_tokens_per_s": output_tokens_per_s(records)},
    }
