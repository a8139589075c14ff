"""From task specs (r1kit.tasks) and a reward spec (r1kit.rewards) to what the trainers consume.

GRPO gets example dicts (each remembers its task, so "accuracy" is scored by that task's own scorer) and the
weighted reward list; SFT gets cold-start conversations from the tasks' reference solutions. Model input follows
the task's template: example["messages"] goes through the chat template, a raw example["prompt"] (r1_zero) is
encoded as plain text after BOS.
"""
from __future__ import annotations

from typing import Any

from r1kit.errors import UserError


def load_tasks(specs: list[str], seed: int):
    from r1kit.tasks import load_task

    if not specs:
        raise UserError("give at least one --task (e.g. --task 'countdown?numbers=3&n=500')")
    return [load_task(s) for s in specs]


def examples_and_rewards(specs: list[str], reward_spec: str | None, seed: int):
    """(examples, [WeightedReward]) for GRPO. Without a reward spec the reward is each task's own scorer."""
    from r1kit.train.grpo import WeightedReward

    tasks = load_tasks(specs, seed)
    examples = [{**ex, "_task": i} for i, t in enumerate(tasks) for ex in t.examples]

    def task_accuracy(completion: str, example: dict) -> float:
        return tasks[example["_task"]].score(completion, example)

    if not reward_spec:
        return examples, [WeightedReward("accuracy", task_accuracy, 1.0)]
    from r1kit.rewards import parse_reward_spec

    combined = parse_reward_spec(reward_spec)
    rewards = [WeightedReward(name, task_accuracy if name == "accuracy" else fn, w)
               for name, (fn, w) in combined.parts.items()]
    return examples, rewards


def prompt_ids(tokenizer, example: dict[str, Any], max_len: int) -> list[int]:
    """Token ids of the model input of `example` (left-truncated to max_len)."""
    if "messages" in example:
        ids = tokenizer.apply_chat_template(example["messages"], add_generation_prompt=True, tokenize=True)
    elif isinstance(example.get("prompt"), list):
        ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True)
    elif isinstance(example.get("prompt"), str):
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = bos + tokenizer.encode(example["prompt"])
    else:
        raise UserError(f"example has neither 'messages' nor 'prompt': keys {sorted(example)}")
    return list(ids[-max_len:])


def cold_start_examples(tokenizer, specs: list[str], n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """SFT (ids, loss mask) examples from the tasks' reference solutions (up to n, spread over the tasks)."""
    from r1kit.train.sft import encode_conversation

    out = []
    tasks = load_tasks(specs, seed)
    per = max(1, n // len(tasks))
    for task in tasks:
        for ex in task.examples[:per]:
            solution = task.reference_solution(ex)
            if "messages" in ex:
                out += encode_conversation(tokenizer, [*ex["messages"], {"role": "assistant", "content": solution}])
            else:
                p = prompt_ids(tokenizer, ex, 1 << 30)
                c = tokenizer.encode(" " + solution) + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None
                                                         else [])
                out.append((p + c, [0] * len(p) + [1] * len(c)))
    return out
