"""`r1kit distill`: rejection sampling. A teacher answers each prompt K times; the samples that the task's own
verifier accepts become chat-format SFT data for a student (R1's distillation recipe).

    r1kit distill --teacher runs/grpo/final --task 'countdown?numbers=3&n=2000' --samples-per-prompt 4 \\
        --max-tokens 512 --keep shortest --out traces.jsonl
    r1kit train sft --model student/ --data traces.jsonl --out runs/student

Output lines are `{"messages": [<the task's prompt messages>, {"role": "assistant", "content": "<think>\\n
REASONING\\n</think>\\n\\nANSWER"}], "task", "problem", "sample", "teacher", "completion_tokens"}`: what
`r1kit train sft --data` (and most SFT trainers) read as it is. A sample is kept when the verifier gives it full
credit and it has an answer; `--keep` picks all of a prompt's accepted samples, the shortest (fewest generated
tokens) or the first; a trace identical to one already written is dropped.

Resuming: every sample (kept or not) is logged to OUT.samples.jsonl, and a prompt's traces are written once all
its samples are scored, in one write. Writing a prompt's traces again skips those already in OUT and is therefore
harmless, so a restart first completes the prompts whose samples were all logged, then generates the missing
samples. OUT.stats.json has the acceptance rate and mean trace length per task.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from r1kit.config import atomic_write_text, build_config
from r1kit.errors import UserError
from r1kit.eval.config import DistillConfig
from r1kit.eval.runner import Problem, check_resumable, generate, load_problems
from r1kit.eval.samples import JsonlLog


def side_paths(out: Path) -> tuple[Path, Path, Path]:
    """OUT.run.json (settings), OUT.samples.jsonl (every sample), OUT.stats.json."""
    return tuple(out.with_name(out.name + suffix) for suffix in (".run.json", ".samples.jsonl", ".stats.json"))


def select(records: list[dict], keep: str) -> list[dict]:
    """The accepted samples of one prompt that become traces, in sample order."""
    ok = sorted((r for r in records if r["correct"] and not r["format_error"]), key=lambda r: r["sample"])
    if not ok or keep == "all":
        return ok
    if keep == "first":
        return ok[:1]
    return [min(ok, key=lambda r: (r["completion_tokens"], r["sample"]))]


def trace(problem: Problem, record: dict, teacher: str) -> dict:
    content = f"<think>\n{record['reasoning']}\n</think>\n\n{record['answer']}"
    return {"messages": [*problem.prompt, {"role": "assistant", "content": content}], "task": problem.task_name,
            "problem": problem.index, "sample": record["sample"], "teacher": teacher,
            "completion_tokens": record["completion_tokens"]}


def _digest(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class TraceWriter:
    """Writes a prompt's traces once all its samples are in, skipping traces already in the file and duplicates."""

    def __init__(self, path: Path, cfg: DistillConfig, teacher: str):
        self.log = JsonlLog(path)
        self.cfg, self.teacher = cfg, teacher
        self.written = {(t.get("task"), t.get("problem"), t.get("sample")) for t in self.log.records}
        self.seen = {_digest(t["messages"]) for t in self.log.records if "messages" in t}
        self.pending: dict[tuple[str, int], list[dict]] = {}

    def add(self, problem: Problem, record: dict) -> None:
        group = self.pending.setdefault((problem.task_name, problem.index), [])
        group.append(record)
        if len({r["sample"] for r in group if r["sample"] < self.cfg.n}) >= self.cfg.n:
            self.finish(problem, self.pending.pop((problem.task_name, problem.index)))

    def finish(self, problem: Problem, records: list[dict]) -> None:
        new = []
        for r in select([r for r in records if r["sample"] < self.cfg.n], self.cfg.keep):
            t = trace(problem, r, self.teacher)
            key, digest = (t["task"], t["problem"], t["sample"]), _digest(t["messages"])
            if key in self.written or digest in self.seen:
                continue
            self.written.add(key)
            self.seen.add(digest)
            new.append(t)
        self.log.append_many(new)


def distill(config: DistillConfig | None = None, *, llm=None, backend=None,
            clock: Callable[[], float] = time.perf_counter, progress: bool = True, **options) -> dict:
    """Run the rejection sampling and return the statistics (also in OUT.stats.json). Options are DistillConfig's
    fields (`model=` is the teacher); `llm` reuses a loaded `r1kit.LLM`, `backend`/`clock` are for tests."""
    from r1kit.eval.evaluate import make_backend, open_run

    if config is None:
        if llm is not None:
            options.setdefault("model", "in-memory")
        config = build_config(DistillConfig, overrides=options)
    elif options:
        config = dataclasses.replace(config, **options)
    cfg = config
    problems = load_problems(cfg)
    for ps in problems.values():
        if not all(p.chat for p in ps):
            raise UserError(f"task {ps[0].task_name!r} has raw-text prompts (template=r1_zero); distill writes chat "
                            "data: use template=r1_distill or template=plain")
    out = Path(cfg.out)
    meta, samples_path, stats_path = side_paths(out)
    if out.exists() and not meta.exists():
        raise UserError(f"{out} exists and was not written by r1kit distill; choose another --out")
    backend = backend or make_backend(cfg, llm=llm, clock=clock)
    teacher = backend.describe()["name"]
    log = open_run(meta, cfg, samples_path)
    writer = TraceWriter(out, cfg, teacher)
    by_key = {(p.task_name, p.index): p for ps in problems.values() for p in ps}
    try:
        check_resumable(log.records, problems, str(samples_path))
        for r in log.records:  # prompts whose samples were all logged before a stop: write their traces now
            if (r["task"], r["problem"]) in by_key:
                writer.add(by_key[(r["task"], r["problem"])], r)
        records, _ = generate(cfg, backend, problems, log, progress=progress,
                              on_record=lambda r: writer.add(by_key[(r["task"], r["problem"])], r))
    finally:
        log.close()
        writer.log.close()
    stats = statistics(cfg, problems, records, JsonlLog(out).records, teacher)
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    return stats


def statistics(cfg: DistillConfig, problems: dict, records: list[dict], traces: list[dict], teacher: str) -> dict:
    tasks = {}
    for spec, ps in problems.items():
        rs = [r for r in records if r["task"] == spec]
        ts = [t for t in traces if t.get("task") == spec and t.get("problem", -1) < len(ps)]
        accepted = [r for r in rs if r["correct"] and not r["format_error"]]
        solved = {r["problem"] for r in accepted}
        tasks[spec] = {"problems": len(ps), "samples": len(rs), "accepted": len(accepted),
                       "acceptance_rate": len(accepted) / len(rs) if rs else None,
                       "problems_solved": len(solved), "traces": len(ts),
                       "mean_trace_tokens": sum(t["completion_tokens"] for t in ts) / len(ts) if ts else None,
                       "mean_accepted_tokens": (sum(r["completion_tokens"] for r in accepted) / len(accepted)
                                                if accepted else None)}
    return {"teacher": teacher, "out": cfg.out, "keep": cfg.keep, "samples_per_prompt": cfg.n, "tasks": tasks,
            "traces": sum(t["traces"] for t in tasks.values())}


def stats_table(stats: dict) -> str:
    from r1kit.eval.report import text_table

    rows = [[spec, str(t["problems"]), str(t["samples"]),
             "-" if t["acceptance_rate"] is None else f"{t['acceptance_rate']:.3f}", str(t["problems_solved"]),
             str(t["traces"]), "-" if t["mean_trace_tokens"] is None else f"{t['mean_trace_tokens']:.0f}"]
            for spec, t in stats["tasks"].items()]
    return text_table(["task", "problems", "samples", "accept rate", "solved", "traces", "trace tok"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1kit.eval.cli import add_generation_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("output: OUT (chat JSONL for `r1kit train sft --data OUT`), OUT.samples.jsonl (every sample, "
                     "scored), OUT.stats.json.\nexample: r1kit distill --teacher runs/grpo/final --task "
                     "'countdown?numbers=3&n=500' --samples-per-prompt 4 --max-tokens 512 --out traces.jsonl")
    add_generation_arguments(parser, DistillConfig, rename={"model": ["--teacher"], "base_url": ["--teacher-url"],
                                                            "n": ["--samples-per-prompt", "-n"]})


def run(args: argparse.Namespace) -> int:
    from r1kit.eval.backends import IncompleteRun
    from r1kit.eval.cli import build

    cfg = build(args, DistillConfig)
    try:
        stats = distill(cfg, progress=not args.no_progress)
    except IncompleteRun as e:
        print(f"r1kit distill: {e}")
        return 1
    print(stats_table(stats))
    print(f"\n{stats['traces']} traces in {cfg.out} (statistics: {side_paths(Path(cfg.out))[2]})")
    return 0
