"""Rewards by name, user rewards from files, weighted combinations, and parallel batch scoring.

A reward is any callable `(completion: str, example: dict) -> float`. Verifiers check the final answer of one kind
of task; "accuracy" dispatches to the one named by example["verifier"]. Other rewards judge form (format, length).
Trainers build their reward from a spec string: `parse_reward_spec("accuracy:1.0,format:0.2")`, where each part is a
registered name or `path/to/file.py:function`, with an optional weight (default 1.0).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from r1kit.errors import UserError
from r1kit.rewards.basic import OverlongPenalty, exact_reward, format_answer_tags_reward, format_reward, numeric_reward
from r1kit.rewards.code import code_reward
from r1kit.rewards.countdown import countdown_reward
from r1kit.rewards.extract import final_answer
from r1kit.rewards.math_reward import math_reward

RewardFn = Callable[[str, dict], float]


RG_DATASETS: dict[str, object] = {}  # live reasoning-gym datasets by example["rg_key"] (filled by r1kit.tasks)


@functools.lru_cache(maxsize=None)
def _rg_score_fn(name: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def reasoning_gym_reward(completion: str, example: dict) -> float:
    """reasoning-gym's own score_answer on the extracted final answer; the entry is the example itself
    (question, answer, metadata with metadata["source_dataset"] naming the dataset). The dataset object that made
    the example scores it when still loaded (its config can matter), else one with the default config."""
    live = RG_DATASETS.get(example.get("rg_key", ""))
    if live is not None:
        return float(live.score_answer(final_answer(completion), example))
    meta = example.get("metadata") or {}
    name = example.get("rg_dataset") or meta.get("source_dataset")
    if not name:
        raise ValueError("the reasoning_gym verifier needs example['metadata']['source_dataset']")
    return float(_rg_score_fn(name)(final_answer(completion), example))


VERIFIERS: dict[str, RewardFn] = {
    "math": math_reward,
    "exact": exact_reward,
    "numeric": numeric_reward,
    "countdown": countdown_reward,
    "code": code_reward,
    "reasoning_gym": reasoning_gym_reward,
}


def accuracy_reward(completion: str, example: dict) -> float:
    """The example's own verifier (example["verifier"], default "math") on the completion."""
    name = example.get("verifier", "math")
    if name not in VERIFIERS:
        raise UserError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name](completion, example)


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "format_answer_tags": format_answer_tags_reward,
    "length": OverlongPenalty(),
    **VERIFIERS,
}


def register_reward(name: str, fn: RewardFn | None = None):
    """Register `fn` under `name` (usable as a decorator: @register_reward("mine"))."""
    def deco(f):
        REWARDS[name] = f
        return f

    return deco(fn) if fn is not None else deco


def load_reward(spec: str) -> RewardFn:
    """A registered reward name, or `path/to/file.py:function` loaded from a user's file."""
    if spec in REWARDS:
        return REWARDS[spec]
    path, sep, attr = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise UserError(f"unknown reward {spec!r}; use one of {', '.join(sorted(REWARDS))} or path/to/file.py:function")
    if not os.path.isfile(path):
        raise UserError(f"reward file {path!r} does not exist")
    mod_name = "r1kit_user_reward_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"could not import reward file {path!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{path!r} has no function {attr!r}")
    return fn


class CombinedReward:
    """Weighted sum of named rewards; `parts` maps each name to (fn, weight) so trainers can log each one's mean."""

    def __init__(self, parts: dict[str, tuple[RewardFn, float]]):
        if not parts:
            raise UserError("a reward spec needs at least one reward")
        self.parts = parts

    def score_parts(self, completion: str, example: dict) -> dict[str, float]:
        return {name: float(fn(completion, example)) for name, (fn, _) in self.parts.items()}

    def combine(self, scores: dict[str, float]) -> float:
        return sum(self.parts[name][1] * s for name, s in scores.items())

    def __call__(self, completion: str, example: dict) -> float:
        return self.combine(self.score_parts(completion, example))

    def score_batch(self, completions: list[str], examples: list[dict], workers: int | None = None):
        """(totals, {name: per-completion scores}) for a batch, scored in parallel (see `score_batch`)."""
        per = {name: score_batch(fn, completions, examples, workers) for name, (fn, _) in self.parts.items()}
        totals = [self.combine({name: per[name][i] for name in per}) for i in range(len(completions))]
        return totals, per


def parse_reward_spec(spec: str) -> CombinedReward:
    """"accuracy:1.0,format:0.2" -> CombinedReward. A part is `name[:weight]` or `file.py:function[:weight]`."""
    parts: dict[str, tuple[RewardFn, float]] = {}
    if not spec.strip(" ,"):
        raise UserError(f"the reward spec {spec!r} is empty: give e.g. accuracy:1.0,format:0.2 (or leave --reward "
                        "out to use each task's own reward)")
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep:
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass  # "file.py:function" without a weight
            if not math.isfinite(weight):
                raise UserError(f"reward {name!r}: the weight must be a finite number, got {tail!r}")
        if name in parts:
            raise UserError(f"reward {name!r} appears twice in {spec!r}")
        parts[name] = (load_reward(name), weight)
    return CombinedReward(parts)


def score_batch(fn: RewardFn, completions: list[str], examples: list[dict], workers: int | None = None) -> list[float]:
    """fn over (completion, example) pairs on `workers` threads (default: one per core), in order.

    Threads suffice because the expensive rewards wait on other processes: math on the math-verify pool (size it to
    the cores), code on sandboxed subprocesses.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(completions) <= 1:
        return [float(fn(c, e)) for c, e in zip(completions, examples)]
    with ThreadPoolExecutor(workers) as pool:
        return [float(s) for s in pool.map(fn, completions, examples)]


def math_reward_batch(completions: list[str], examples: list[dict], workers: int | None = None) -> list[float]:
    return score_batch(math_reward, completions, examples, workers)
