"""A task is examples (model input + gold answer + verifier name) and the scorer that checks completions.

Tasks are named by one spec string, the way trainers and the CLI take them (r1kit/tasks/registry.py: load_task):

    load_task("arithmetic?digits=3&ops=+-*&n=200&seed=0&split=train&template=r1_distill")
    load_task("countdown?numbers=4&max_value=100&n=500")
    load_task("reasoning_gym:chain_sum?n=100&seed=1&min_terms=2")   # unknown keys go to the dataset's config
    load_task("jsonl:data/my.jsonl")  /  load_task("data/my.jsonl")
    load_task("humaneval")

Common keys: n (number of examples), seed, split ("train" | "test": held out by seed and, for built-in tasks, also by
content), template ("r1_distill" | "r1_zero" | "plain"). Values are taken literally (no URL decoding, so ops=+-*
works) and parsed as int, float, true/false, else string.
Keyword arguments to load_task override the spec's keys.

Example dict fields: question (raw text), messages (chat input) or prompt (raw-text input, r1_zero), answer (gold,
str), verifier (a name in r1kit.rewards.VERIFIERS), metadata (dict); code examples add tests and code_prefix.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from r1kit.errors import UserError
from r1kit.rewards.registry import RewardFn, accuracy_reward
from r1kit.tasks.templates import format_completion


@dataclass
class Task:
    name: str
    examples: list[dict]
    scorer: RewardFn = accuracy_reward
    reference: Callable[[dict], str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def score(self, completion: str, example: dict) -> float:
        return float(self.scorer(completion, example))

    def direct_solution(self, example: dict) -> str:
        """The reference solution with its thinking emptied: what a model that answers at once writes (the target of
        a direct-answer baseline). Tasks without reference solutions answer with the gold answer."""
        head, _, tail = self._reference_or_answer(example).partition("</think>")
        return ("<think>\n" if head.lstrip().startswith("<think>") else "") + "\n</think>" + tail

    def plain_text(self, example: dict) -> str:
        """The problem and its answer as plain text, no chat format (base-model training data)."""
        return f"{example['question'].strip()}\n{self._reference_or_answer(example).partition('</think>')[2].strip()}"

    def _reference_or_answer(self, example: dict) -> str:
        if self.reference is not None:
            return self.reference(example)
        return format_completion(example, "", str(example["answer"]))

    def reference_solution(self, example: dict) -> str:
        """A completion with step-by-step reasoning and the right final answer (cold-start SFT data)."""
        if self.reference is None:
            raise UserError(f"task {self.name!r} has no reference solutions")
        return self.reference(example)


TEST_SHARE = 10  # one problem in ten belongs to the test split


def split_of(question: str) -> str:
    """'test' or 'train' by a hash of the problem's text: a test problem is in no train set, whatever the seeds."""
    return "test" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % TEST_SHARE == 0 else "train"


def _parse_value(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_task_spec(spec: str) -> tuple[str, str, dict]:
    """"source:arg?k=v&k2=v2" -> (source, arg, params). A bare path ending in .jsonl means jsonl:path."""
    head, _, query = spec.partition("?")
    params = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"task spec {spec!r}: write options as ?key=value&key2=value2 (got {item!r})")
        params[key.strip()] = _parse_value(value.strip())
    if head.endswith(".jsonl") and not head.startswith("jsonl:"):
        head = "jsonl:" + head
    source, _, arg = head.partition(":")
    return source, arg, params


_COUNTS = ("n", "size", "numbers", "digits", "max_value", "max_target")  # options that must not be negative


def check_param(spec_name: str, key: str, value, default):
    """`value` as the type of `default` (int, float, bool or str), or a UserError naming the option."""
    def bad(what: str):
        return UserError(f"task {spec_name!r}: {key} must be {what}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if key in _COUNTS and value < 0:
            raise bad("a non-negative integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad("a number")
        return float(value)
    return value if isinstance(value, str) else str(value)


def pop_params(params: dict, spec_name: str, **defaults) -> dict:
    """Take the known keys (with defaults) out of params, each checked against its default's type; leftover keys
    are an error naming what is allowed."""
    out = {k: check_param(spec_name, k, params.pop(k), v) if k in params else v for k, v in defaults.items()}
    if params:
        raise UserError(f"task {spec_name!r} has no option(s) {', '.join(sorted(params))}; "
                        f"allowed: {', '.join(sorted(defaults))}")
    return out
