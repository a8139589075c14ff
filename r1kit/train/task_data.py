"""From task specs (r1kit.tasks) and a reward spec (r1kit.rewards) to what the trainers consume.

GRPO gets example dicts (each remembers its task, so "accuracy" is scored by that task's own scorer) and the
combined reward (r1kit.rewards.CombinedReward); SFT gets cold-start conversations from the tasks' reference
solutions. Model input follows
the task's template: example["messages"] goes through the chat template, a raw example["prompt"] (r1_zero) is
encoded as plain text after BOS.
"""
from __future__ import annotations

from typing import Any

from r1kit.errors import UserError
from r1kit.rewards import CombinedReward, parse_reward_spec
from r1kit.tasks import Task, load_task
from r1kit.train.sft_data import encode_conversation, encode_text


def load_tasks(specs: list[str]) -> list[Task]:
    """The tasks of the --task specs (each spec carries its own seed: 'countdown?n=500&seed=1')."""
    if not specs:
        raise UserError("give at least one --task (e.g. --task 'countdown?numbers=3&n=500')")
    return [load_task(s) for s in specs]


def examples_and_rewards(specs: list[str], reward_spec: str | None) -> tuple[list[dict], CombinedReward]:
    """(examples, reward) for GRPO. Without a reward spec the reward is each task's own scorer ("accuracy")."""
    tasks = load_tasks(specs)
    examples = [{**ex, "_task": i} for i, t in enumerate(tasks) for ex in t.examples]

    def task_accuracy(completion: str, example: dict) -> float:
        return tasks[example["_task"]].score(completion, example)

    parts = parse_reward_spec(reward_spec).parts if reward_spec is not None else {"accuracy": (task_accuracy, 1.0)}
    return examples, CombinedReward({name: (task_accuracy if name == "accuracy" else fn, w)
                                     for name, (fn, w) in parts.items()})


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


TASK_TARGETS = ("reasoning", "direct", "text")


def cold_start_examples(tokenizer, specs: list[str], n: int,
                        target: str = "reasoning") -> list[tuple[list[int], list[int]]]:
    """SFT (ids, loss mask) examples from the tasks' reference solutions: up to n spread over the tasks (n <= 0:
    every example of each task). `target` says what the model learns to write:
      reasoning  the step-by-step reference solution inside the thinking block, then the answer (cold start)
      direct     an empty thinking block, then the answer (a model that answers without thinking)
      text       no chat template: the question and the answer as plain text, loss on every token (base training)
    """
    if target not in TASK_TARGETS:
        raise UserError(f"task target must be one of {', '.join(TASK_TARGETS)}, got {target!r}")
    out = []
    tasks = load_tasks(specs)
    per = max(1, n // len(tasks)) if n > 0 else None
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for task in tasks:
        for ex in task.examples[:per]:
            if target == "text":
                out.append(encode_text(tokenizer, task.plain_text(ex)))
                continue
            solution = task.reference_solution(ex) if target == "reasoning" else task.direct_solution(ex)
            if "messages" in ex:
                out += encode_conversation(tokenizer, [*ex["messages"], {"role": "assistant", "content": solution}])
            else:
                p = prompt_ids(tokenizer, ex, 1 << 30)
                c = tokenizer.encode(" " + solution) + eos
                out.append((p + c, [0] * len(p) + [1] * len(c)))
    return out
