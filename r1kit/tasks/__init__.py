"""Tasks: prompts + gold answers + the scorer, from one spec string (see base.py for the format).

    from r1kit.tasks import load_task
    task = load_task("countdown?numbers=4&n=500&split=train")
    for ex in task:  ex["messages"] (or ex["prompt"] for template=r1_zero), ex["answer"], task.score(completion, ex)
    task.reference_solution(ex)   # built-in tasks and HumanEval: a completion with step-by-step reasoning

Sources (registered in registry.py): arithmetic, countdown, humaneval, reasoning_gym:<dataset>, jsonl:<path> (or a
path ending in .jsonl).
"""
from r1kit.tasks.base import Task, parse_task_spec
from r1kit.tasks.registry import TASK_SOURCES, load_task, register_task_source
from r1kit.tasks.templates import (
    R1_DISTILL_INSTRUCTION,
    R1_ZERO_TEMPLATE,
    TEMPLATES,
    apply_template,
    format_completion,
)

__all__ = [
    "R1_DISTILL_INSTRUCTION", "R1_ZERO_TEMPLATE", "TASK_SOURCES", "TEMPLATES", "Task", "apply_template",
    "format_completion", "load_task", "parse_task_spec", "register_task_source",
]
