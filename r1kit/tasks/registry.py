"""Task sources by name, registered in this one place, and `load_task`, the one way to get a task.

The spec format is described in r1kit/tasks/base.py. Built-in sources: arithmetic and countdown (procedural.py),
reasoning_gym:<dataset>, jsonl:<path> (or a path ending in .jsonl) and humaneval (sources.py);
`register_task_source` adds your own.
"""
from __future__ import annotations

from typing import Callable

from r1kit.errors import UserError
from r1kit.tasks import procedural, sources
from r1kit.tasks.base import Task, parse_task_spec

TaskLoader = Callable[[str, dict], Task]  # (argument after "name:", params) -> Task
TASK_SOURCES: dict[str, TaskLoader] = {
    "arithmetic": procedural.load_arithmetic,
    "countdown": procedural.load_countdown,
    "reasoning_gym": sources.load_reasoning_gym,
    "jsonl": sources.load_jsonl,
    "humaneval": sources.load_humaneval,
}


def register_task_source(name: str):
    """Decorator: `@register_task_source("mine")` makes `load_task("mine:arg?k=v")` call the function with
    (arg, params)."""
    def deco(fn: TaskLoader) -> TaskLoader:
        TASK_SOURCES[name] = fn
        return fn

    return deco


def load_task(spec: str, **overrides) -> Task:
    """The task named by `spec` (see r1kit/tasks/base.py for the format); keyword arguments override its keys."""
    source, arg, params = parse_task_spec(spec)
    params.update(overrides)
    if source not in TASK_SOURCES:
        raise UserError(f"unknown task source {source!r} in {spec!r}; known: {', '.join(sorted(TASK_SOURCES))} "
                        "or a path ending in .jsonl")
    split = params.get("split", "train")
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    return TASK_SOURCES[source](arg, params)
